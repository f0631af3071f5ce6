"""Logging, configured once per process: every line one JSON object in production.

structlog renders Montage's own events; the standard library's loggers (aiohttp, asyncpg,
redis-py) go through the same processors (``structlog.stdlib.ProcessorFormatter``), and so do
Python ``warnings`` (``logging.captureWarnings``), so no plain text ever lands in the JSON stream. Each request gets one ``access`` line (see
:func:`montage_common.web.observe.observe_middleware`). With tracing on (:mod:`montage_common.tracing`)
every line logged inside a span carries its ``trace_id`` and ``span_id``.
"""

from __future__ import annotations

import logging
import sys

import structlog

from montage_common import tracing
from montage_common.settings import CommonSettings


def configure(settings: CommonSettings, service: str) -> None:
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "json" if settings.is_production or not sys.stderr.isatty() else "console"
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        tracing.add_trace_ids,  # trace_id and span_id while a span is current (tracing on)
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # The standard library's loggers (aiohttp, asyncpg, redis-py): the same renderer, so every
    # line is JSON too; quieter than our own (warnings and up, unless LOG_LEVEL says less).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.WARNING))
    # Python warnings (DeprecationWarning from a library, ResourceWarning...) would print as plain
    # text on stderr, between the JSON lines: route them to the "py.warnings" logger instead.
    logging.captureWarnings(True)
