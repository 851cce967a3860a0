"""JSON-lines logs on stdout through structlog, with the service and replica bound."""

from __future__ import annotations

import logging
import os
import socket
import sys

import orjson
import structlog


def configure_logging(level: str, service: str = "consumer") -> None:
    """Route structlog and the standard library (uvicorn) to one JSON line per event on stdout."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(
                serializer=lambda value, **_: orjson.dumps(value).decode()
            ),
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("uvicorn.access").disabled = True  # requests are logged by our middleware
    logging.getLogger("azure").setLevel(logging.WARNING)
    structlog.contextvars.bind_contextvars(
        service=service,
        replica=os.environ.get(
            "CONTAINER_APP_REPLICA_NAME", f"{socket.gethostname()}-{os.getpid()}"
        ),
    )
