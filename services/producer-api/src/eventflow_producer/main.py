"""Entry point: settings, logging, the app, uvicorn. SIGTERM stops accepting, finishes in-flight
requests, then closes the store (the app's lifespan)."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from eventflow_producer.api import create_app
from eventflow_producer.bootstrap import open_store
from eventflow_producer.logs import configure_logging
from eventflow_producer.settings import Settings


def create_default_app() -> FastAPI:
    """The app from the environment's settings (for `uvicorn --factory`)."""
    settings = Settings()
    configure_logging(settings.log_level)
    return create_app(settings, open_store)


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    app = create_app(settings, open_store)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=20)  # fmt: skip


if __name__ == "__main__":
    main()
