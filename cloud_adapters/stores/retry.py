"""Retry with exponential backoff, for transient store errors only.

Only a :class:`~fedge.errors.CloudError` marked ``transient`` is retried: trying refused
credentials again cannot succeed and would only hide the one line the operator needs. The delays
grow geometrically up to a cap, without jitter, so runs and tests are reproducible; ``sleep`` is a
parameter so that unit tests can count the waits instead of sleeping them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from fedge.errors import CloudError

__all__ = ["RetryPolicy", "call_with_retry"]

T = TypeVar("T")
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard one store operation tries: ``attempts`` in all, waits from ``base_delay_s``."""

    attempts: int = 4
    base_delay_s: float = 0.5
    factor: float = 2.0
    max_delay_s: float = 8.0
    timeout_s: float = 30.0  # per HTTP request, handed to the libcloud connection

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.base_delay_s < 0 or self.max_delay_s < 0 or self.factor < 1:
            raise ValueError("delays must be non-negative and factor at least 1")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")

    def delays(self) -> list[float]:
        """The waits between attempts (one fewer than ``attempts``)."""
        return [
            min(self.max_delay_s, self.base_delay_s * self.factor**index)
            for index in range(self.attempts - 1)
        ]


def call_with_retry(
    operation: Callable[[], T],
    policy: RetryPolicy,
    *,
    describe: str,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``operation``; on a transient CloudError wait and try again, up to ``attempts``."""
    delays = policy.delays()
    for attempt in range(policy.attempts):
        try:
            return operation()
        except CloudError as exc:
            if not exc.transient or attempt == len(delays):
                if exc.transient and policy.attempts > 1:
                    raise CloudError(
                        f"{_message_of(exc)} (after {policy.attempts} attempts)",
                        provider=exc.provider,
                        container=exc.container,
                        object_name=exc.object_name,
                        transient=True,
                    ) from exc
                raise
            _log.info("%s failed (%s); retrying in %.2fs", describe, exc, delays[attempt])
            sleep(delays[attempt])
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _message_of(exc: CloudError) -> str:
    """The message without the provider/container/object prefix CloudError adds."""
    text = str(exc)
    where = "/".join(part for part in (exc.container, exc.object_name) if part)
    prefix = f"{exc.provider}{': ' + where if where else ''}: "
    return text[len(prefix) :] if text.startswith(prefix) else text
