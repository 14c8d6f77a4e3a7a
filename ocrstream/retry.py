"""The one retry policy (tenacity): exponential backoff with full jitter for transient failures,
and bounded waits for a condition (topic metadata, leadership after a broker restart).

Backoff follows the "full jitter" scheme (AWS Architecture Blog, "Exponential Backoff And
Jitter", 2015): sleep ``uniform(0, min(max, base * 2**n))`` (tenacity's ``wait_random_exponential``).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, TypeVar

from tenacity import (RetryCallState, Retrying, retry_if_exception, retry_if_exception_type, stop_after_attempt,
                      stop_after_delay, wait_fixed, wait_random_exponential)

from ocrstream.errors import OcrstreamError

log = logging.getLogger(__name__)

T = TypeVar("T")


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning("transient failure (%s), retry %d in %.2fs", getattr(exc, "code", exc), state.attempt_number,
                state.next_action.sleep if state.next_action else 0.0)


def retry_transient(fn: Callable[[], T], *, attempts: int = 5, base_delay_s: float = 0.2,
                    max_delay_s: float = 5.0, stop: threading.Event | None = None) -> T:
    """Call ``fn``; retry transient :class:`OcrstreamError` with exponential backoff and full jitter
    (at most ``attempts`` calls; none more once ``stop`` is set).

    Raises:
        OcrstreamError: the last error after ``attempts`` tries, or a permanent one at once; its
            ``attempts`` attribute says how many calls were made.
    """
    def transient(exc: BaseException) -> bool:
        return isinstance(exc, OcrstreamError) and exc.transient and not (stop is not None and stop.is_set())

    retrying = Retrying(retry=retry_if_exception(transient), stop=stop_after_attempt(attempts),
                        wait=wait_random_exponential(multiplier=base_delay_s, max=max_delay_s),
                        before_sleep=_log_retry, reraise=True)
    try:
        return retrying(fn)
    except OcrstreamError as exc:
        exc.attempts = retrying.statistics.get("attempt_number", 1)  # type: ignore[attr-defined]
        raise


def retry_for(fn: Callable[[], T], *, timeout_s: float, interval_s: float = 0.5,
              on: type[BaseException] | tuple[type[BaseException], ...] = Exception) -> T:
    """Call ``fn`` every ``interval_s`` seconds while it raises ``on``, for at most ``timeout_s``.

    Raises:
        the last exception of type ``on`` after ``timeout_s``.
    """
    return Retrying(retry=retry_if_exception_type(on), stop=stop_after_delay(timeout_s), wait=wait_fixed(interval_s),
                    reraise=True)(fn)
