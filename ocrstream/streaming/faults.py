"""Named fault points for the failure tests: SIGKILL this process at a chosen place.

Off unless ``OCRSTREAM_FAULT_POINT`` names a point (a testing setting, documented in the
README; never set it in production). ``OCRSTREAM_FAULT_POINT=worker.after_produce:3`` kills
the process the 3rd time it passes ``worker.after_produce``; without ``:N`` the first time.
The count lives in this process only, so a restarted process with the same setting dies
again at its N-th pass: tests bound their kills by restarting without it.

Points (grep ``fault_point(``): ``worker.after_produce`` (outputs produced, before the commit
or transaction commit), ``worker.after_commit``, ``splitter.after_produce``,
``assembler.after_produce``.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

_spec = os.environ.get("OCRSTREAM_FAULT_POINT", "")
_name, _, _nth = _spec.partition(":")
_remaining = int(_nth or 1)


def fault_point(name: str) -> None:
    """SIGKILL this process if ``OCRSTREAM_FAULT_POINT`` names ``name`` (at its N-th pass)."""
    global _remaining
    if not _name or name != _name:
        return
    _remaining -= 1
    if _remaining <= 0:
        log.warning("fault point %s: SIGKILL", name)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
