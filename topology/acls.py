"""Who may do what on which topic, group and transactional id: the Kafka ACLs, derived from the
topology so that each stage touches only its own topics.

One principal per role. ``GRANTS`` lists, per role, the logical topics it reads and writes
(the data flow of the README's architecture), its consumer group and its transactional-id
prefix; :func:`acl_grants` turns them into concrete resources for a topic and group prefix.
``ocrstream acls apply`` creates them (``AdminClient.create_acls``). Kafka >= 3.0 producers need
no ``IDEMPOTENT_WRITE`` (KIP-679: ``WRITE`` on a topic implies it); ``READ`` implies ``DESCRIBE``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .pages import DEFAULT_PROFILE, LANES, check_profile_name, page_topics, worker_group
from .shadow import SHADOW_RESULTS
from .tenants import check_tenant_name, follower_group, tenant_topic

ROLES = ("submitter", "splitter", "worker", "assembler", "watcher", "outbox", "analytics", "operator",
         "gateway", "webhooks")


@dataclass(frozen=True)
class RoleGrants:
    """What one role needs (logical topic names, stage names for groups and transactional ids)."""

    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    describes: tuple[str, ...] = ()  # watermarks of another stage's input (lag checks)
    group: str | None = None  # consumer group it joins and commits as
    other_groups: tuple[str, ...] = ()  # more groups it joins (the OCR worker's interactive lane)
    describes_groups: tuple[str, ...] = ()  # groups whose committed offsets it reads
    group_families: tuple[str, ...] = ()  # "<group_prefix><name>-*": one throwaway group per run
    # "<group_prefix><name>-*" named by consumers that only assign(): DESCRIBE (the coordinator
    # lookup librdkafka makes for any group.id), never READ (no join, no offset fetch or commit)
    describe_group_families: tuple[str, ...] = ()
    tenants_too: bool = False  # its reads/writes of ingest and document-results include every tenant's
    tenant_results: bool = False  # reads every tenant's document-results topic too (and no tenant ingest)
    transactional: bool = False  # transactional ids "<group_prefix><stage>-*"
    restores: bool = False  # reads a state topic by assignment (group "<group_prefix>restore-*")


PAGE_TOPICS = tuple(page_topics())
"""The default profile's page topics, one per priority lane (``pages-interactive``, ``pages``)."""

WORKER_GROUPS = tuple(worker_group(lane=lane) for lane in LANES)
"""Their worker groups (``worker-interactive``, ``worker``): one per page topic."""

GRANTS: dict[str, RoleGrants] = {
    # programs, `ocrstream submit`: publish references, follow results (by assignment, no group)
    "submitter": RoleGrants(writes=("ingest",), reads=("document-results",), group_families=("follower",)),
    # failed documents are reported directly (failed result + dead letter)
    # page placement reads the worker group's assignment (DescribeConsumerGroups)
    # the result cache and the workers' fingerprints (metrics samples): read by assignment (groups
    # "restore-result-cache-*"); a hit is a document result
    "splitter": RoleGrants(reads=("ingest", "result-cache", "metrics"),
                           writes=(*PAGE_TOPICS, "document-results", "dead-letters"),
                           describes_groups=WORKER_GROUPS, group="splitter", transactional=True, restores=True),
    "worker": RoleGrants(reads=(*PAGE_TOPICS, "page-attempts"), writes=("page-results", "dead-letters", "metrics",
                                                                   "page-attempts"),
                         group="worker", other_groups=WORKER_GROUPS[:-1], transactional=True, restores=True),
    # the document deadline waits for the worker groups' lag on the page topics; shadow copies'
    # results go to shadow-results (topology.shadow)
    "assembler": RoleGrants(reads=("page-results", "assembler-state"),
                            writes=("document-results", "dead-letters", "assembler-state", "result-cache",
                                    SHADOW_RESULTS),
                            describes=PAGE_TOPICS, describes_groups=WORKER_GROUPS, group="assembler",
                            transactional=True, restores=True),
    "watcher": RoleGrants(reads=("object-events", "watch-state"), writes=("ingest", "watch-state"),
                          group="watch", transactional=True, restores=True),
    # sinks: document results to files in object storage (S3 rights from their policies)
    "outbox": RoleGrants(reads=("document-results",), writes=("dead-letters",), group="outbox", transactional=True),
    "analytics": RoleGrants(reads=("document-results",), writes=("dead-letters",), group="analytics",
                            transactional=True),
    # people: `dlq list|replay` (a replay re-produces to the topic the record failed on),
    # `delete` (tombstones in document-results, result-cache and shadow-results), `top` (metrics), `compare`
    # (document-results, shadow-results and metrics by assignment); S3 rights come from its policy
    "operator": RoleGrants(reads=("dead-letters", "metrics", "document-results", SHADOW_RESULTS),
                           writes=("ingest", *PAGE_TOPICS, "page-results", "document-results", "result-cache",
                                   SHADOW_RESULTS),
                           group="dlq-replay", group_families=("dlq-list", "top", "follower", "compare")),
    # the HTTP gateway (`ocrstream gateway`): publishes references for the tenants of its API keys,
    # tails their results topics by assignment (groups `gateway-<id>`, `gateway-fetch-<id>`), and
    # measures the page backlog (watermarks of the page topics, committed offsets of their worker groups)
    "gateway": RoleGrants(writes=("ingest",), reads=("document-results",), describes=PAGE_TOPICS,
                          describes_groups=WORKER_GROUPS, describe_group_families=("gateway",), tenants_too=True),
    # completion callbacks (`ocrstream webhooks`): every tenant's results in, dead letters out; the
    # calls themselves leave through HTTP, not Kafka
    "webhooks": RoleGrants(reads=("document-results",), writes=("dead-letters",), group="webhooks",
                           transactional=True, tenant_results=True),
}


@dataclass(frozen=True)
class Grant:
    """One ACL: ALLOW ``operation`` on ``resource`` (``topic``, ``group``, ``transactional_id``,
    ``cluster``) named ``name`` (``literal`` or ``prefixed`` pattern) for ``role``'s principal."""

    role: str
    resource: str
    name: str
    pattern: str
    operation: str


def tenant_role(tenant: str) -> str:
    """The role (principal ``{role}``) of tenant ``tenant``'s publishers: ``tenant-<tenant>``."""
    return f"tenant-{check_tenant_name(tenant)}"


def acl_grants(topic_prefix: str, group_prefix: str, roles: tuple[str, ...] = ROLES,
               tenants: tuple[str, ...] = (), profiles: tuple[str, ...] = ()) -> list[Grant]:
    """The ACLs of ``roles`` for topics named ``<topic_prefix><name>`` and groups / transactional
    ids starting with ``<group_prefix>``, plus one role per tenant (:func:`tenant_role`). No
    wildcard grant: every topic is named, and the prefixed patterns are a stage's own group or
    transactional-id family.

    Tenants (see :mod:`topology.tenants`): a tenant's principal writes only its own ingest topic
    and reads only its own results topic; the splitter reads every tenant's ingest topic, and
    the stages that publish document results (splitter: failed ones, assembler) and the operator
    reach every tenant's results topic, each by name; the gateway writes every tenant's ingest
    topic and reads every tenant's results topic (it acts as the tenant of each request's API key);
    the webhooks stage reads every tenant's results topic (each tenant's callbacks).

    Model profiles besides ``default`` (``OCRSTREAM_PROFILES``, see :mod:`topology.pages`): each
    profile's page topics (every lane) are named like the ``pages`` topic's grants: the worker
    reads them and joins the profile's own groups ``worker.<p>`` and ``worker.<p>.interactive`` (one principal serves every
    profile: its workers run the same code, only the models differ), the splitter writes them and
    describes those groups (page placement), the assembler and the gateway describe both (lag checks),
    the operator writes them (a dead letter's replay goes back to the topic it failed on).
    """
    out: list[Grant] = []
    for profile in (p for p in profiles if p != DEFAULT_PROFILE):
        groups = [group_prefix + worker_group(check_profile_name(profile), lane) for lane in LANES]
        for topic in (topic_prefix + t for t in page_topics(profile)):
            if "worker" in roles:
                out.append(Grant("worker", "topic", topic, "literal", "READ"))
            for role in ("splitter", "operator"):
                if role in roles:
                    out += [Grant(role, "topic", topic, "literal", "WRITE"),
                            Grant(role, "topic", topic, "literal", "DESCRIBE")]
            for role in ("assembler", "gateway"):  # lag checks
                if role in roles:
                    out.append(Grant(role, "topic", topic, "literal", "DESCRIBE"))
        for group in groups:  # one per lane (topology.pages.worker_group)
            if "worker" in roles:
                out.append(Grant("worker", "group", group, "literal", "READ"))
            for role in ("splitter", "assembler", "gateway"):
                if role in roles:
                    out.append(Grant(role, "group", group, "literal", "DESCRIBE"))
    for tenant in tenants:
        ingest, results = (topic_prefix + tenant_topic(tenant, t) for t in ("ingest", "document-results"))
        role = tenant_role(tenant)
        out += [Grant(role, "topic", ingest, "literal", "WRITE"), Grant(role, "topic", ingest, "literal", "DESCRIBE"),
                Grant(role, "topic", results, "literal", "READ"),
                Grant(role, "group", f"{group_prefix}{follower_group(tenant)}-", "prefixed", "READ")]
        if "splitter" in roles:
            out.append(Grant("splitter", "topic", ingest, "literal", "READ"))
        for stage in ("splitter", "assembler", "operator"):
            if stage in roles:
                out += [Grant(stage, "topic", results, "literal", "WRITE"),
                        Grant(stage, "topic", results, "literal", "DESCRIBE")]
        if "operator" in roles:
            out.append(Grant("operator", "topic", results, "literal", "READ"))
        for role_name in roles:
            if GRANTS[role_name].tenants_too:  # the gateway: the tenant's ingest and results topics
                out += [Grant(role_name, "topic", ingest, "literal", "WRITE"),
                        Grant(role_name, "topic", ingest, "literal", "DESCRIBE"),
                        Grant(role_name, "topic", results, "literal", "READ")]
            elif GRANTS[role_name].tenant_results:  # the webhooks stage: the tenant's results only
                out.append(Grant(role_name, "topic", results, "literal", "READ"))
    for role in roles:
        g = GRANTS[role]
        for t in g.reads:
            out.append(Grant(role, "topic", topic_prefix + t, "literal", "READ"))
        for t in g.writes:
            out.append(Grant(role, "topic", topic_prefix + t, "literal", "WRITE"))
            out.append(Grant(role, "topic", topic_prefix + t, "literal", "DESCRIBE"))
        for t in g.describes:
            out.append(Grant(role, "topic", topic_prefix + t, "literal", "DESCRIBE"))
        for group in ((g.group,) if g.group else ()) + g.other_groups:
            out.append(Grant(role, "group", group_prefix + group, "literal", "READ"))
        for other in g.describes_groups:
            out.append(Grant(role, "group", group_prefix + other, "literal", "DESCRIBE"))
        if g.restores:
            out.append(Grant(role, "group", f"{group_prefix}restore-", "prefixed", "READ"))
        if g.transactional:
            # <group_prefix><stage>-<worker id> (and the watcher's <group_prefix>watch-<bucket>-<prefix>)
            for op in ("WRITE", "DESCRIBE"):
                out.append(Grant(role, "transactional_id", f"{group_prefix}{g.group}-", "prefixed", op))
            # the transaction-timeout check at start reads the brokers' transaction.max.timeout.ms
            out.append(Grant(role, "cluster", "kafka-cluster", "literal", "DESCRIBE_CONFIGS"))
        for family in g.group_families:  # read by assignment; librdkafka still looks the group up
            out.append(Grant(role, "group", f"{group_prefix}{family}-", "prefixed", "READ"))
        for family in g.describe_group_families:
            out.append(Grant(role, "group", f"{group_prefix}{family}-", "prefixed", "DESCRIBE"))
    return out
