"""Structured logging for the service: structlog, rendered as JSON or for a console.

:func:`configure_logging` is called once at start (``reelvault serve``). Everything goes to
stderr through the standard library's root logger, so records from grpc, botocore and
SQLAlchemy come out in the same format as reelvault's own. Context bound with
``structlog.contextvars`` (the RPC interceptor binds the request id) is added to every
line logged while it is bound.

Never log secrets: tokens, key material, plaintext. Log identifiers.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Final, TextIO

import structlog

__all__ = ["configure_logging"]

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(level: str = "info", log_format: str = "console") -> None:
    """Route structlog and standard-library logging to stderr in one format.

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error``.
        log_format: ``json`` (one object per line, for collectors) or ``console``.
    """
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks without local variables: a frame's locals can hold a token, key material
    # or plaintext, and logs are read by more people than keys are.
    renderer: Any
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    # botocore logs request details (including signed headers) at DEBUG; keep it quieter.
    logging.getLogger("botocore").setLevel(max(_LEVELS[level], logging.INFO))


class _StderrHandler(logging.StreamHandler[TextIO]):
    """A handler writing to whatever ``sys.stderr`` is when a record is emitted, not what
    it was when logging was configured: a process that swaps stderr (a test capturing
    output, a daemonizing wrapper) must not leave the handler writing to a closed file."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass  # always the current sys.stderr
