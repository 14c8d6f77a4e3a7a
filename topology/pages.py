"""Page topics: one per model profile and priority lane.

The splitter routes each document's page tasks to the page topic of its *profile* (the
detection + recognition models, runtime and DPI that OCR it, see ``OCRSTREAM_PROFILES``) and its
*lane* (``DocumentRef.priority``):

==================  ==========================  =====================================
profile             lane ``batch`` (default)     lane ``interactive``
==================  ==========================  =====================================
``default``         ``pages``                    ``pages-interactive``
``<p>``             ``profile.<p>.pages``        ``profile.<p>.pages-interactive``
==================  ==========================  =====================================

Why one topic per lane and not a priority field: a Kafka consumer reads a partition in offset
order, so a page queued behind 5,000 batch pages on the same partition waits for all of them,
whatever it says about itself. With its own topic, a worker can drain the interactive
partitions first and pause the batch ones while interactive pages are waiting. Why one topic per
profile: a worker serves one profile (its models are loaded once; a profile whose runtime needs
another environment, like the PaddlePaddle engine, runs in other processes), and a consumer
group only gets the topics it subscribes to. The default profile keeps the plain ``pages`` name
so single-profile deployments are unchanged.

Each profile has its own worker group (:func:`worker_group`): ``worker`` for the default one,
``worker.<p>`` for the others, so the splitter's placement and the gateway's backlog read one
group's assignment and lag per profile. Each lane but ``batch`` has a group of its own too
(``worker-interactive``, ``worker.<p>.interactive``), joined by the same worker processes with a
second consumer. Why not one group reading both topics: Kafka's sticky assignors balance the
*total* partition count per member, not each topic's (librdkafka #4044): when the second of two
workers joined, the first kept all 12 ``pages`` partitions and the second got all 12
``pages-interactive`` ones, so one worker did all the batch work. One group per topic keeps each
lane spread over every worker, and leaves the batch lane's group exactly as it was.
"""

from __future__ import annotations

import re

DEFAULT_PROFILE = "default"
"""The profile of documents that name none (the models of the engine settings)."""

LANES = ("interactive", "batch")
"""Priority lanes, in the order workers drain them."""

DEFAULT_LANE = "batch"

PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
"""Profile names: like tenant names (valid in topic and group names, no ``.``)."""


def check_profile_name(profile: str) -> str:
    """``profile``, unchanged.

    Raises:
        ValueError: not matching :data:`PROFILE_NAME`.
    """
    if not PROFILE_NAME.match(profile):
        raise ValueError(f"profile name {profile!r}: use lower-case letters, digits and '-' (at most 63)")
    return profile


def page_topic(profile: str = DEFAULT_PROFILE, lane: str = DEFAULT_LANE) -> str:
    """Logical name (without the topic prefix) of the page topic of ``profile`` and ``lane``.

    Raises:
        ValueError: an unknown lane or an invalid profile name.
    """
    if lane not in LANES:
        raise ValueError(f"lane {lane!r}: one of {', '.join(LANES)}")
    base = "pages" if profile == DEFAULT_PROFILE else f"profile.{check_profile_name(profile)}.pages"
    return base if lane == DEFAULT_LANE else f"{base}-{lane}"


def page_topics(profile: str = DEFAULT_PROFILE) -> list[str]:
    """The page topics a worker of ``profile`` reads, in drain order (:data:`LANES`)."""
    return [page_topic(profile, lane) for lane in LANES]


def parse_page_topic(logical: str) -> tuple[str, str] | None:
    """``(profile, lane)`` of a page topic's logical name, None if it is not one."""
    parts = logical.split(".")
    if len(parts) == 3 and parts[0] == "profile" and PROFILE_NAME.match(parts[1]):
        profile, name = parts[1], parts[2]
    elif len(parts) == 1:
        profile, name = DEFAULT_PROFILE, parts[0]
    else:
        return None
    for lane in LANES:
        if name == ("pages" if lane == DEFAULT_LANE else f"pages-{lane}"):
            return profile, lane
    return None


def worker_group(profile: str = DEFAULT_PROFILE, lane: str = DEFAULT_LANE) -> str:
    """The worker consumer group (without the group prefix) that reads the page topic of
    ``profile`` and ``lane``: ``worker`` or ``worker.<profile>`` for the batch lane,
    ``worker-<lane>`` or ``worker.<profile>.<lane>`` for another (profile names have no ``.``, so
    no lane's group is another profile's).

    Raises:
        ValueError: an unknown lane or an invalid profile name.
    """
    if lane not in LANES:
        raise ValueError(f"lane {lane!r}: one of {', '.join(LANES)}")
    base = "worker" if profile == DEFAULT_PROFILE else f"worker.{check_profile_name(profile)}"
    if lane == DEFAULT_LANE:
        return base
    return f"{base}-{lane}" if profile == DEFAULT_PROFILE else f"{base}.{lane}"
