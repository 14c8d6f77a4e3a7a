"""Priority lanes a tenant may use: a grant, checked where a document enters, never trusted from it.

``DocumentRef.priority`` asks for a lane (:mod:`topology.pages`: ``interactive`` pages have
their own topic, which the OCR workers drain before the ``batch`` one). Whether the publisher
may have it is configuration (``OCRSTREAM_TENANT_LANES``, :meth:`ocrstream.settings.Settings.lanes_of`),
looked up by the tenant of the ingest topic the reference came from: the splitter enforces it
(``lane_not_allowed``: a dead letter and a ``failed`` result), and the gateway refuses such a
request before anything is stored. Why a grant: interactive pages go before every batch page
of every tenant, so one tenant marking its bulk load interactive would stall everyone else's
batch work and slow their interactive pages.
"""

from __future__ import annotations

from topology.pages import DEFAULT_LANE, LANES

from .errors import OcrstreamError, ReasonCode
from .settings import Settings


def allowed_lane(s: Settings, tenant: str | None, priority: str | None) -> str:
    """The lane of a document of ``tenant`` (None: the default tenant) asking for ``priority``
    (None: ``batch``).

    Raises:
        OcrstreamError: ``lane_not_allowed``: not one of the tenant's lanes, or not a lane at all.
    """
    lane = priority or DEFAULT_LANE
    allowed = s.lanes_of(tenant)
    if lane not in allowed:
        what = "lane" if lane in LANES else f"lane (lanes: {', '.join(LANES)})"
        raise OcrstreamError(ReasonCode.LANE_NOT_ALLOWED, f"tenant {tenant or '-'} may not use the {lane[:20]!r} "
                             f"{what}; allowed: {', '.join(allowed)} (OCRSTREAM_TENANT_LANES)")
    return lane
