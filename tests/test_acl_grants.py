"""The ACL rows generated from the topology (topology/acls.py), without a broker: every topic a
role touches is named (no wildcard), and the data flow of the architecture is what they allow."""

from __future__ import annotations

from topology import GRANTS, ROLES, acl_bindings, acl_grants, topic_specs


def _allowed(role: str, op: str, resource: str = "topic") -> set[str]:
    return {g.name for g in acl_grants("ocr.", "ocrstream.") if g.role == role and g.operation == op
            and g.resource == resource}


def test_no_wildcards_and_only_known_topics():
    grants = acl_grants("ocr.", "ocrstream.")
    known = {"ocr." + t.name for t in topic_specs()}
    for g in grants:
        assert "*" not in g.name and g.name, g
        if g.resource == "topic":
            assert g.pattern == "literal" and g.name in known, g
        if g.pattern == "prefixed":  # a stage's own group / transactional-id family, ending in "-"
            assert g.name.startswith("ocrstream.") and g.name.endswith("-"), g
    assert set(GRANTS) == set(ROLES)


def test_the_data_flow():
    assert _allowed("submitter", "WRITE") == {"ocr.ingest"}
    assert _allowed("submitter", "READ") == {"ocr.document-results"}
    assert _allowed("splitter", "WRITE") == {"ocr.pages", "ocr.pages-interactive", "ocr.document-results",
                                             "ocr.dead-letters"}
    assert _allowed("worker", "READ") == {"ocr.pages", "ocr.pages-interactive", "ocr.page-attempts"}
    # the priority lanes' backlog: assembler (deadline) and gateway (429) describe both page topics
    assert {"ocr.pages", "ocr.pages-interactive"} <= _allowed("assembler", "DESCRIBE")
    assert "ocr.pages-interactive" not in _allowed("assembler", "READ") | _allowed("gateway", "WRITE")
    assert "ocr.ingest" not in _allowed("worker", "WRITE") | _allowed("assembler", "WRITE")
    assert _allowed("assembler", "WRITE") == {"ocr.document-results", "ocr.dead-letters", "ocr.assembler-state",
                                              "ocr.result-cache",
                                              "ocr.shadow-results"}  # shadow copies' results (topology.shadow)
    # the result cache and the workers' fingerprints (metrics samples), by assignment
    assert _allowed("splitter", "READ") == {"ocr.ingest", "ocr.result-cache", "ocr.metrics"}
    assert _allowed("watcher", "WRITE") == {"ocr.ingest", "ocr.watch-state"}
    for sink in ("outbox", "analytics"):  # read the results, write only dead letters, in their own group
        assert _allowed(sink, "READ") == {"ocr.document-results"}
        assert _allowed(sink, "WRITE") == {"ocr.dead-letters"}
        assert _allowed(sink, "READ", "group") == {f"ocrstream.{sink}"}
        assert _allowed(sink, "WRITE", "transactional_id") == {f"ocrstream.{sink}-"}
    assert _allowed("worker", "READ", "group") == {"ocrstream.worker", "ocrstream.worker-interactive",
                                                   "ocrstream.restore-"}
    assert _allowed("splitter", "READ", "group") == {"ocrstream.splitter", "ocrstream.restore-"}
    # the document deadline's lag check, one group per lane
    assert _allowed("assembler", "DESCRIBE", "group") == {"ocrstream.worker", "ocrstream.worker-interactive"}
    assert _allowed("splitter", "WRITE", "transactional_id") == {"ocrstream.splitter-"}
    # follower groups read by assignment: looked up, never joined as a stage's group
    assert _allowed("submitter", "READ", "group") == {"ocrstream.follower-"}
    assert _allowed("operator", "READ", "group") == {"ocrstream.dlq-replay", "ocrstream.dlq-list-", "ocrstream.top-",
                                                     "ocrstream.follower-", "ocrstream.compare-"}
    assert not any(g.resource == "transactional_id" for g in acl_grants("ocr.", "ocrstream.", ("submitter", "operator")))


def test_bindings_name_the_principal_of_each_role():
    bindings = acl_bindings(acl_grants("ocr.", "ocrstream."), lambda role: f"User:ocrstream-{role}")
    assert {b.principal for b in bindings} == {f"User:ocrstream-{r}" for r in ROLES}
    assert all(b.host == "*" for b in bindings)


def test_the_gateway_publishes_and_follows_for_every_tenant_and_nothing_else():
    """The HTTP gateway: writes each ingest topic it serves, reads their results, describes the
    page backlog (the pages topic's offsets, the worker group's commits) and names only
    ``gateway-*`` groups, which it never joins or commits (it assign()s): DESCRIBE, not READ."""
    grants = [g for g in acl_grants("ocr.", "ocrstream.", tenants=("acme",)) if g.role == "gateway"]

    def names(op: str, resource: str = "topic") -> set[str]:
        return {g.name for g in grants if g.operation == op and g.resource == resource}

    assert names("WRITE") == {"ocr.ingest", "ocr.tenant.acme.ingest"}
    assert names("READ") == {"ocr.document-results", "ocr.tenant.acme.document-results"}
    assert names("DESCRIBE") == {"ocr.ingest", "ocr.tenant.acme.ingest", "ocr.pages", "ocr.pages-interactive"}
    assert names("DESCRIBE", "group") == {"ocrstream.worker", "ocrstream.worker-interactive", "ocrstream.gateway-"}
    assert not names("READ", "group")  # no group it could join, commit in, or read offsets of
    assert {g.resource for g in grants} == {"topic", "group"}  # no transactional id, no cluster right
    assert {(g.name, g.pattern) for g in grants if g.resource == "group"} == {
        ("ocrstream.worker", "literal"), ("ocrstream.worker-interactive", "literal"),
        ("ocrstream.gateway-", "prefixed")}
    # the pipeline's internals stay out of reach: no page tasks, page results or dead letters
    assert not {g.name for g in grants} & {"ocr.page-results", "ocr.dead-letters", "ocr.assembler-state"}
    assert names("WRITE") & {"ocr.pages"} == set()


def test_the_webhooks_stage_reads_every_tenants_results_and_writes_only_dead_letters():
    """Completion callbacks leave through HTTP: in Kafka the stage reads every results topic
    (each tenant's callbacks), writes dead letters, commits in its own group; no ingest, no pages."""
    grants = [g for g in acl_grants("ocr.", "ocrstream.", tenants=("acme",)) if g.role == "webhooks"]

    def names(op: str, resource: str = "topic") -> set[str]:
        return {g.name for g in grants if g.operation == op and g.resource == resource}

    assert names("READ") == {"ocr.document-results", "ocr.tenant.acme.document-results"}
    assert names("WRITE") == {"ocr.dead-letters"}
    assert names("READ", "group") == {"ocrstream.webhooks"}
    assert names("WRITE", "transactional_id") == {"ocrstream.webhooks-"}
    assert not {g.name for g in grants} & {"ocr.ingest", "ocr.tenant.acme.ingest", "ocr.pages", "ocr.page-results"}
def test_profiles_get_their_page_topics_and_worker_group_and_shadow_results_stay_internal():
    """A model profile besides ``default`` (topology.pages): its page topics (every lane) are read
    by the worker role in the profile's own group ``worker.<p>``, written by the splitter (which
    describes that group for placement), described by the assembler (deadline lag check), written
    by the operator (dead-letter replay); nobody else touches them. ``shadow-results`` is written
    by the assembler and read only by the operator (``ocrstream compare``): no submitter, tenant,
    sink or gateway can read a shadow copy's result."""
    grants = acl_grants("ocr.", "ocrstream.", tenants=("acme",), profiles=("fast",))
    topics = {"ocr.profile.fast.pages", "ocr.profile.fast.pages-interactive"}
    assert topics <= {"ocr." + t.name for t in topic_specs(profiles=("fast",))}

    def who(name: str, op: str, resource: str = "topic") -> set[str]:
        return {g.role for g in grants if g.name == name and g.operation == op and g.resource == resource}

    for topic in topics:
        assert who(topic, "READ") == {"worker"}
        assert who(topic, "WRITE") == {"splitter", "operator"}
        assert who(topic, "DESCRIBE") == {"splitter", "operator", "assembler", "gateway"}
    for group in ("ocrstream.worker.fast", "ocrstream.worker.fast.interactive"):  # one per lane
        assert who(group, "READ", "group") == {"worker"}
        assert who(group, "DESCRIBE", "group") == {"splitter", "assembler", "gateway"}
    assert who("ocr.shadow-results", "READ") == {"operator"}
    assert who("ocr.shadow-results", "WRITE") == {"assembler", "operator"}
    # without profiles nothing of theirs is granted; the default profile keeps its plain names
    assert not any("profile." in g.name or g.name.startswith("ocrstream.worker.")
                   for g in acl_grants("ocr.", "ocrstream.", tenants=("acme",)))
