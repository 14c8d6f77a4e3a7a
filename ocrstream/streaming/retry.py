"""The one retry policy for transient failures (object store timeouts, 5xx)."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable, TypeVar

from ocrstream.errors import OcrstreamError

log = logging.getLogger(__name__)

T = TypeVar("T")


def retry_transient(fn: Callable[[], T], *, attempts: int = 5, base_delay_s: float = 0.2,
                    max_delay_s: float = 5.0, stop: threading.Event | None = None) -> T:
    """Call ``fn``; retry transient :class:`OcrstreamError` with exponential backoff and full jitter.

    Backoff follows the "full jitter" scheme (AWS Architecture Blog, "Exponential
    Backoff And Jitter", 2015): sleep ``uniform(0, min(max, base * 2**n))``.

    Raises:
        OcrstreamError: the last error after ``attempts`` tries, or a permanent one at once.
    """
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except OcrstreamError as exc:
            if not exc.transient or attempt == attempts or (stop is not None and stop.is_set()):
                exc.attempts = attempt  # type: ignore[attr-defined]
                raise
            delay = random.uniform(0, min(max_delay_s, base_delay_s * 2 ** attempt))
            log.warning("transient failure (%s), retry %d/%d in %.2fs", exc.code, attempt, attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
