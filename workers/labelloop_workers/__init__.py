"""Celery workers for labelloop: the app, queues and routes, thin tasks and guards."""
