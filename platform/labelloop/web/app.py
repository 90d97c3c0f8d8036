"""The application `labelloop serve` runs: the REST API with the dashboard mounted at `/`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from labelloop.api.app import create_app as create_api
from labelloop.config import Settings
from labelloop.web.pages import mount


def create_app(settings: Settings | None = None, **kwargs: Any) -> FastAPI:
    app = create_api(settings, **kwargs)
    mount(app)
    return app
