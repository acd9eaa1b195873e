"""Logging helpers: libraries only create loggers; the command-line tools configure them.

Secrets read from a ``secretRef`` are registered with :func:`register_secret`, and the filter
installed by :func:`configure` replaces them with ``***`` in every record, so a credential never
reaches a log even when a third-party library logs a URL or a header that contains it.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["ROOT_LOGGER", "RedactingFilter", "configure", "get_logger", "register_secret"]

ROOT_LOGGER = "fedge"
_secrets: set[str] = set()
_lock = threading.Lock()

logging.getLogger(ROOT_LOGGER).addHandler(logging.NullHandler())


def get_logger(name: str) -> logging.Logger:
    """A logger under the ``fedge`` namespace (``get_logger(__name__)`` in every module)."""
    return logging.getLogger(
        name if name.startswith(ROOT_LOGGER + ".") else f"{ROOT_LOGGER}.{name}"
    )


def register_secret(value: str) -> None:
    """Remember a secret so that log output never shows it (values shorter than 4 are ignored)."""
    if len(value) >= 4:
        with _lock:
            _secrets.add(value)


class RedactingFilter(logging.Filter):
    """Replace every registered secret in the formatted message with ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        with _lock:
            secrets = sorted(_secrets, key=len, reverse=True)
        if secrets:
            message = record.getMessage()
            for secret in secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


def configure(verbosity: int = 0) -> None:
    """Set up stderr logging for a command-line tool: 0 warnings, 1 info, 2+ debug."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
