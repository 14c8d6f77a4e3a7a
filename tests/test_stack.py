"""The local stack starts real services and topics apply idempotently."""

import subprocess
import sys

import pytest

from ocrstream.kafka import make_admin
from topology import apply_topics, fit_replication, topic_specs

from conftest import REPO, settings_env


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


def test_replication_fits_the_cluster():
    """Production replication (3 copies, min ISR 2) unless the cluster is a single broker; two
    brokers for three copies is an error, not a silent downgrade."""
    specs = topic_specs()
    assert {(t.replication_factor, t.config["min.insync.replicas"]) for t in specs} == {(3, "2")}
    same, note = fit_replication(specs, 3)
    assert same == specs and note.startswith("replication factor 3, min.insync.replicas 2")
    single, note = fit_replication(specs, 1)
    assert {(t.replication_factor, t.config["min.insync.replicas"]) for t in single} == {(1, "1")}
    assert "single broker" in note
    with pytest.raises(ValueError, match="2 brokers"):
        fit_replication(specs, 2)


def test_pages_partitions_setting_sizes_pages_and_attempts():
    from ocrstream.settings import Settings
    from topology import PAGES_PARTITIONS

    assert Settings().pages_partitions == PAGES_PARTITIONS  # the documented default is topology's
    specs = {t.name: t.partitions for t in topic_specs(pages_partitions=48)}
    assert specs["pages"] == specs["page-attempts"] == 48 and specs["page-results"] == 6


def test_topics_apply_states_single_broker_replication(settings):
    """On the single-broker stack `topics apply` lowers the production replication and says so."""
    proc = subprocess.run([sys.executable, "-m", "ocrstream.cli", "topics", "apply"], env=settings_env(settings),
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("replication factor 1, min.insync.replicas 1: the cluster has a single broker"), first
    assert "production topics get 3 copies, min.insync.replicas 2" in first
    md = make_admin(settings).list_topics(timeout=10).topics
    assert {len(p.replicas) for p in md[settings.topic("pages")].partitions.values()} == {1}
