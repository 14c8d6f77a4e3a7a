"""The local stack starts real services and topics apply idempotently."""

from ocrstream.kafka import make_admin
from topology import apply_topics, topic_specs


def test_stack_reports_running(stack):
    statuses = {s.name: s for s in stack.status()}
    assert statuses["kafka"].running and statuses["s3"].running
    # up() on a running stack is a no-op, not a second broker
    pid = statuses["kafka"].pid
    stack.up()
    assert {s.name: s for s in stack.status()}["kafka"].pid == pid


def test_topics_apply_is_idempotent_and_reports_drift(settings):
    admin = make_admin(settings)
    reports = apply_topics(admin, topic_specs(), settings.topic_prefix)
    assert {r.action for r in reports} == {"exists"}
    changed = topic_specs()
    changed[1] = type(changed[1])(changed[1].name, changed[1].partitions * 2, 1, changed[1].config)
    reports = apply_topics(admin, changed, settings.topic_prefix)
    drift = {r.topic: r for r in reports if r.action == "drift"}
    assert list(drift) == [settings.topic("pages")]
    assert "partitions" in drift[settings.topic("pages")].drift[0]
    md = admin.list_topics(timeout=10).topics
    assert len(md[settings.topic("pages")].partitions) == 12
