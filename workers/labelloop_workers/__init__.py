"""Celery workers for labelloop: the app, queues and routes, the stage tasks (stages), the
pipeline run's orchestration (pipeline), beat's schedule, guards and the CLI commands."""
