"""Create missing topics and report drift (``ocrstream topics apply``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from .topics import PRODUCTION_REPLICATION_FACTOR, TopicSpec, min_insync_for


@dataclass
class TopicReport:
    """What ``apply`` found or did for one topic."""

    topic: str
    action: str  # "created" | "exists" | "drift"
    drift: list[str]
    replication_factor: int = 0
    """the replication factor the topic was created with or compared against"""


def fit_replication(specs: list[TopicSpec], brokers: int) -> tuple[list[TopicSpec], str]:
    """The specs as a cluster of ``brokers`` can hold them, and one line saying what
    replication they get (``ocrstream topics apply`` prints it).

    - ``brokers`` at least every spec's replication factor: unchanged (production: 3 copies,
      ``min.insync.replicas`` 2 on a cluster of 3 or more brokers).
    - a single broker (the local stack): replication factor 1, ``min.insync.replicas`` 1.

    Raises:
        ValueError: 2..factor-1 brokers: too few for the specs, yet not a single-broker
            development stack (maybe a cluster with brokers down), so nothing is lowered silently.
    """
    want = max((s.replication_factor for s in specs), default=1)
    if brokers >= want:
        isr = {s.config.get("min.insync.replicas") for s in specs} - {None}
        return specs, (f"replication factor {want}, min.insync.replicas {'/'.join(sorted(isr)) or '-'} "
                       f"({brokers} broker{'s' if brokers != 1 else ''})")
    if brokers == 1:
        fitted = [replace(s, replication_factor=1, config={**s.config, "min.insync.replicas": "1"}
                          if "min.insync.replicas" in s.config else s.config) for s in specs]
        return fitted, (f"replication factor 1, min.insync.replicas 1: the cluster has a single broker (a "
                        f"development stack); production topics get {PRODUCTION_REPLICATION_FACTOR} copies, "
                        f"min.insync.replicas {min_insync_for(PRODUCTION_REPLICATION_FACTOR)}, on 3 or more brokers")
    raise ValueError(f"the cluster lists {brokers} brokers, the topics want replication factor {want}: start the "
                     f"missing brokers (a cluster with brokers down lists fewer), or pass a replication factor "
                     f"of at most {brokers}")


def _wait_until_led(admin: AdminClient, topics: set[str], partitions: dict[str, int], timeout_s: float) -> None:
    """Wait (bounded) until the broker's metadata shows every new topic with a leader for each
    partition.

    Why: CreateTopics returns once the controller committed the topic, before every broker's
    metadata cache has it. A producer that starts right away can be told the topic is unknown,
    drop its partition state and reset the idempotence sequence numbers. The broker then takes
    the next batches for duplicates and acknowledges them without writing them (librdkafka #3712,
    #3672). We saw exactly that: the first 1-3 documents published right after the test fixture
    created the topics were acknowledged and never appeared in the topic (2 of 3 CI runs).

    Raises:
        TimeoutError: not all partitions have a leader after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        md = admin.list_topics(timeout=max(1.0, deadline - time.monotonic())).topics
        pending = [name for name in topics
                   if name not in md or md[name].error is not None or len(md[name].partitions) != partitions[name]
                   or any(p.leader < 0 or p.error is not None for p in md[name].partitions.values())]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics without a leader for every partition after {timeout_s:.0f}s: {sorted(pending)}")
        time.sleep(0.2)


def apply_topics(admin: AdminClient, specs: list[TopicSpec], prefix: str, timeout_s: float = 30.0,
                 fit: bool = True) -> list[TopicReport]:
    """Create the topics that are missing; compare the others with their spec.

    Drift (fewer partitions, different replication or config values) is
    reported, not changed: repartitioning moves keys and must be a human decision.

    Args:
        fit: on a single-broker cluster, replication factor 1 / min ISR 1 instead of the specs'
            (:func:`fit_replication`); False: the specs as they are (the broker refuses a
            factor above its broker count).

    Raises:
        confluent_kafka.KafkaException: the broker refused a creation.
        ValueError: ``fit`` and a cluster with fewer brokers than the factor, but more than one.
    """
    metadata = admin.list_topics(timeout=timeout_s)
    existing = metadata.topics
    if fit:
        specs, _ = fit_replication(specs, len(metadata.brokers))
    reports: list[TopicReport] = []
    to_create = []
    for spec in specs:
        name = prefix + spec.name
        if name not in existing:
            to_create.append(NewTopic(name, num_partitions=spec.partitions,
                                      replication_factor=spec.replication_factor, config=spec.config))
    if to_create:
        futures = admin.create_topics(to_create, operation_timeout=timeout_s, request_timeout=timeout_s)
        for name, fut in futures.items():
            try:
                fut.result()
            except Exception as exc:  # a concurrent `apply` may have won the race
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
    created = {t.topic for t in to_create}
    if created:
        _wait_until_led(admin, created, {t.topic: t.num_partitions for t in to_create}, timeout_s)
    resources = [ConfigResource(ResourceType.TOPIC, prefix + s.name) for s in specs if prefix + s.name not in created]
    configs = {}
    if resources:
        for res, fut in admin.describe_configs(resources, request_timeout=timeout_s).items():
            configs[res.name] = {k: v.value for k, v in fut.result().items()}
    for spec in specs:
        name = prefix + spec.name
        if name in created:
            reports.append(TopicReport(name, "created", [], spec.replication_factor))
            continue
        drift = []
        tmeta = existing[name]
        if len(tmeta.partitions) != spec.partitions:
            drift.append(f"partitions {len(tmeta.partitions)} != {spec.partitions}")
        rf = len(next(iter(tmeta.partitions.values())).replicas) if tmeta.partitions else 0
        if rf != spec.replication_factor:
            drift.append(f"replication {rf} != {spec.replication_factor}")
        for key, want in spec.config.items():
            have = configs.get(name, {}).get(key)
            if have != want:
                drift.append(f"{key}={have} != {want}")
        reports.append(TopicReport(name, "drift" if drift else "exists", drift, spec.replication_factor))
    return reports


_ACL_RESOURCE = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP,
                 "transactional_id": ResourceType.TRANSACTIONAL_ID,
                 "cluster": ResourceType.BROKER}  # confluent-kafka's BROKER is Kafka's CLUSTER resource (4)


def acl_bindings(grants: list, principal_of: Callable[[str], str]) -> list:
    """``AclBinding``s (ALLOW, any host) for :class:`topology.acls.Grant` rows; ``principal_of(role)``
    gives the principal, e.g. ``User:ocrstream-worker``."""
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType

    return [AclBinding(_ACL_RESOURCE[g.resource], g.name,
                       ResourcePatternType.PREFIXED if g.pattern == "prefixed" else ResourcePatternType.LITERAL,
                       principal_of(g.role), "*", AclOperation[g.operation], AclPermissionType.ALLOW)
            for g in grants]


def apply_acls(admin: AdminClient, grants: list, principal_of: Callable[[str], str], timeout_s: float = 30.0) -> int:
    """Create the ACLs (idempotent: an existing binding is left as it is) and wait until the
    broker answers with all of them; returns how many.

    Why wait: in KRaft the controller commits the ACLs to the metadata log and each broker's
    authorizer applies them when it replays that log, a moment later. A client started right
    after ``create_acls`` returned could still be refused; ``DescribeAcls`` is answered from the
    same broker-side state, so once it lists every binding they are in force there.

    Raises:
        confluent_kafka.KafkaException: the broker refused (no authorizer, or not a super user).
        TimeoutError: the broker did not list them all within ``timeout_s``.
    """
    from confluent_kafka.admin import AclBindingFilter, AclOperation, AclPermissionType, ResourcePatternType

    bindings = acl_bindings(grants, principal_of)
    for future in admin.create_acls(bindings, request_timeout=timeout_s).values():
        future.result(timeout_s)
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,
                                  AclPermissionType.ANY)
    deadline = time.monotonic() + timeout_s
    while True:
        missing = set(bindings) - set(admin.describe_acls(everything, request_timeout=timeout_s).result(timeout_s))
        if not missing:
            return len(bindings)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(missing)} of {len(bindings)} ACLs not in force after {timeout_s}s")
        time.sleep(0.2)
