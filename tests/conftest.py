"""Shared fixtures: a real local stack (Kafka KRaft broker + SeaweedFS S3) for the session.

The stack is started with the same code as ``ocrstream stack up``, on test ports
(Kafka 29092, S3 28333) and a temporary data folder, and stopped at the end.
Set ``OCRSTREAM_TEST_KEEP_STACK=1`` to leave it running between runs (faster
local iteration; it is then reused because ``up`` is idempotent).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from ocrstream.kafka import make_admin
from ocrstream.settings import Settings
from ocrstream.stack import Stack
from ocrstream.storage import ObjectStore
from topology import apply_topics, topic_specs

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
TEST_STACK_DIR = Path(os.environ.get("OCRSTREAM_TEST_STACK_DIR", "/tmp/ocrstream-test-stack"))


def base_settings(**overrides) -> Settings:
    """Settings pointing at the test stack (independent of the developer's env)."""
    values = dict(
        kafka_bootstrap_servers="127.0.0.1:29092",
        kafka_port=29092,
        kafka_controller_port=29093,
        s3_endpoint="127.0.0.1:28333",
        s3_port=28333,
        stack_port_base=37000,
        stack_dir=TEST_STACK_DIR,
        kafka_libs=REPO / "deploy" / "kafka" / "libs",
        s3_access_key="ocrstream",
        s3_secret_key="ocrstream-secret",
        bucket="ocrstream-test",
        batch_max_wait_ms=100,
        session_timeout_ms=10_000,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def stack():
    """The running local stack (started once per test session)."""
    s = base_settings()
    st = Stack(s)
    st.up()
    yield st
    if not os.environ.get("OCRSTREAM_TEST_KEEP_STACK"):
        st.down()


@pytest.fixture
def settings(stack, request) -> Settings:
    """Settings with a fresh topic prefix, group prefix and bucket for this test, topics applied."""
    tag = uuid.uuid4().hex[:8]
    s = base_settings(topic_prefix=f"t{tag}.", group_prefix=f"g{tag}.", bucket=f"test-{tag}",
                      worker_id=f"w-{tag}")
    reports = apply_topics(make_admin(s), topic_specs(), s.topic_prefix)
    assert all(r.action == "created" for r in reports)
    ObjectStore(s).ensure_bucket()
    return s


@pytest.fixture
def store(settings) -> ObjectStore:
    return ObjectStore(settings)


def shared_data(name: str) -> Path:
    """A folder under ../shared/data, or skip the test when it is absent."""
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path
