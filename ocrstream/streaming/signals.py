"""SIGTERM/SIGINT as a stop flag that every stage loop checks."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


class StopFlag:
    """Set by SIGTERM/SIGINT (when installed in the main thread) or by :meth:`set`."""

    def __init__(self, install_signals: bool = True) -> None:
        self.event = threading.Event()
        if install_signals and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handler)
            signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum, frame) -> None:
        log.info("signal %s: stopping", signum)
        self.event.set()

    def set(self) -> None:
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()
