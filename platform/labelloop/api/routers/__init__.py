"""One router per resource: health, projects (and their versions, rounds), runs, models,
webhooks."""
