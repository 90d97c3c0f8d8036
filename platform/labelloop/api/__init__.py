"""The REST API (`labelloop serve`): triggers, runs and their progress, versions, models."""

from labelloop.api.app import create_app

__all__ = ["create_app"]
