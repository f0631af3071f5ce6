"""The retry rules of a consumer, in one value (after Temporal's ``RetryPolicy``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a consumer retries: when, how often, and when to give up.

    - ``delays``: one delay (seconds) per retry of a retryable failure, so an entry gets
      ``1 + len(delays)`` attempts; after the last one it is dead-lettered.
    - ``max_deliveries``: an entry reclaimed from dead consumers more often than this is poison
      (it kills whoever runs it) and is dead-lettered without another attempt.
    - ``handler_timeout``: a handler running longer is cancelled and the attempt counts as a
      retryable ``TIMEOUT`` failure (``None``: no limit).
    """

    delays: tuple[float, ...] = (2.0, 4.0, 8.0)
    max_deliveries: int = 5
    handler_timeout: float | None = None

    def __post_init__(self) -> None:
        if any(d < 0 for d in self.delays) or self.max_deliveries < 1:
            raise ValueError("retry delays must be >= 0 and max_deliveries >= 1")
        if self.handler_timeout is not None and self.handler_timeout <= 0:
            raise ValueError("handler_timeout must be positive (or None)")

    @classmethod
    def exponential(
        cls, retries: int, base_seconds: float, *, max_deliveries: int = 5, handler_timeout: float | None = None
    ) -> RetryPolicy:
        """``retries`` delays doubling from ``base_seconds`` (2, 4, 8 for 3 and 2.0)."""
        delays = tuple(base_seconds * 2**i for i in range(retries))
        return cls(delays, max_deliveries=max_deliveries, handler_timeout=handler_timeout)

    @property
    def attempts(self) -> int:
        return 1 + len(self.delays)

    def delay_before(self, retry_no: int) -> float | None:
        """The delay before retry number ``retry_no`` (1-based), or ``None`` when none is left."""
        return self.delays[retry_no - 1] if 1 <= retry_no <= len(self.delays) else None
