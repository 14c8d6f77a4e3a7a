"""Shared fixtures: a real local stack (Kafka KRaft broker + SeaweedFS S3) for the session.

The stack is started with the same code as ``ocrstream stack up``, on test ports
(Kafka 29092, S3 28333) and a temporary data folder, and stopped at the end.
Set ``OCRSTREAM_TEST_KEEP_STACK=1`` to leave it running between runs (faster
local iteration; it is then reused because ``up`` is idempotent).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path

import pytest

from devtools.stack import Stack
from ocrstream.kafka import make_admin
from ocrstream.settings import Settings
from ocrstream.storage import ObjectStore
from topology import apply_topics, topic_specs

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
# Inside the checkout (git-ignored), so two clones never share a broker's data.
TEST_STACK_DIR = Path(os.environ.get("OCRSTREAM_TEST_STACK_DIR", REPO / ".ocrstream-test-stack"))


# Ports of the test stack; OCRSTREAM_TEST_PORT_OFFSET moves them all, so two checkouts (or two
# sessions) can run the suite side by side.
_OFFSET = int(os.environ.get("OCRSTREAM_TEST_PORT_OFFSET", "0"))


def base_settings(**overrides) -> Settings:
    """Settings pointing at the test stack (independent of the developer's env)."""
    values = dict(
        kafka_bootstrap_servers=f"127.0.0.1:{29092 + _OFFSET}",
        kafka_port=29092 + _OFFSET,
        kafka_controller_port=29093 + _OFFSET,
        s3_endpoint=f"127.0.0.1:{28333 + _OFFSET}",
        s3_port=28333 + _OFFSET,
        stack_port_base=37000 + _OFFSET,
        stack_dir=TEST_STACK_DIR,
        kafka_libs=REPO / "deploy" / "kafka" / "libs",
        s3_access_key="ocrstream",
        s3_secret_key="ocrstream-secret",
        bucket="ocrstream-test",
        batch_max_wait_ms=100,
        session_timeout_ms=10_000,
        # The tests OCR generated born-digital PDFs to test OCR: the text-layer fast path is
        # tested where a test turns it on (tests/test_textlayer.py).
        text_layer="off",
        # The tests submit the same generated documents again and again and count their OCR: the
        # result cache is tested where a test turns it on (tests/test_result_cache.py, test_acls.py).
        result_cache_ttl_h=0.0,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def stack():
    """The running local stack (started once per test session)."""
    import shutil

    s = base_settings()
    st = Stack(s)
    keep = bool(os.environ.get("OCRSTREAM_TEST_KEEP_STACK"))
    if not keep:
        # Start from empty data: topics left by earlier runs (thousands of partitions after a
        # few) slow the single broker down until tests time out.
        st.down()
        shutil.rmtree(TEST_STACK_DIR, ignore_errors=True)
    st.up()
    yield st
    if not keep:
        st.down()
        shutil.rmtree(TEST_STACK_DIR, ignore_errors=True)


@pytest.fixture
def settings(stack, request) -> Settings:
    """Settings with a fresh topic prefix, group prefix and bucket for this test, topics applied."""
    tag = uuid.uuid4().hex[:8]
    s = base_settings(topic_prefix=f"t{tag}.", group_prefix=f"g{tag}.", bucket=f"test-{tag}",
                      worker_id=f"w-{tag}")
    admin = make_admin(s)
    reports = apply_topics(admin, topic_specs(), s.topic_prefix)
    assert all(r.action == "created" for r in reports)
    ObjectStore(s).ensure_bucket()
    yield s
    # Delete this test's topics (and the assembler's state topic), so the broker does not carry
    # every earlier test's partitions for the rest of the session.
    mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(s.topic_prefix)]
    if mine:
        for future in admin.delete_topics(mine, operation_timeout=30).values():
            try:
                future.result(30)
            except Exception:  # noqa: BLE001 - best effort; the session's data is wiped at the end
                pass


@pytest.fixture
def store(settings) -> ObjectStore:
    return ObjectStore(settings)


def shared_data(name: str) -> Path:
    """A folder under ../shared/data, or skip the test when it is absent."""
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


class StageThreads:
    """Runs stage objects (anything with ``run()`` and a ``stop`` flag) in threads; stops them at teardown."""

    def __init__(self) -> None:
        self.running: list[tuple[object, object]] = []  # (stage, threading.Thread)
        self.errors: dict[int, BaseException] = {}  # id(stage) -> what its run() raised

    def start(self, stage) -> object:
        import threading

        def run() -> None:
            try:
                stage.run()
            except BaseException as exc:  # noqa: BLE001 - kept for the test to assert on
                self.errors[id(stage)] = exc

        t = threading.Thread(target=run, name=type(stage).__name__, daemon=True)
        t.start()
        self.running.append((stage, t))
        return stage

    def stop(self, stage, timeout_s: float = 60.0) -> None:
        for st, t in self.running:
            if st is stage:
                st.stop.set()
                t.join(timeout_s)
                assert not t.is_alive(), f"{type(st).__name__} did not stop within {timeout_s}s"
        self.running = [(st, t) for st, t in self.running if st is not stage]

    def stop_all(self) -> None:
        for st, _ in list(self.running):
            self.stop(st)


@pytest.fixture
def stages():
    """Start stages in threads with ``stages.start(obj)``; all are stopped after the test, and
    an exception a stage's ``run()`` raised fails the test at teardown (a test that expects one
    takes it out of ``stages.errors`` with ``pop``)."""
    runner = StageThreads()
    yield runner
    runner.stop_all()
    assert not runner.errors, f"stage threads raised: {runner.errors}"


def consume_all(s: Settings, topic: str, count: int, timeout_s: float = 60.0, key_filter=None,
                read_uncommitted: bool = False, up_to: bool = False) -> list:
    """Read ``count`` records from a topic from the beginning (read_committed unless
    ``read_uncommitted``); the test fails when fewer arrive within ``timeout_s`` (records were
    expected). ``up_to=True``: ``count`` is only a bound, return what arrived (for "everything
    there is" reads; a "nothing more arrives" check must first wait for the committed offsets)."""
    import time as _time

    from confluent_kafka import Consumer

    from ocrstream.kafka import consumer_config

    extra = {"isolation.level": "read_uncommitted"} if read_uncommitted else {}
    c = Consumer(consumer_config(s, f"reader-{uuid.uuid4().hex[:8]}", **extra))
    c.subscribe([topic])
    out = []
    deadline = _time.monotonic() + timeout_s
    try:
        while len(out) < count and _time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            if key_filter is None or key_filter(m.key()):
                out.append(m)
    finally:
        c.close()
    if not up_to and len(out) < count:
        pytest.fail(f"{len(out)} of {count} expected records on {topic} within {timeout_s}s")
    return out


def read_topic(s: Settings, topic: str, timeout_s: float = 30.0, read_uncommitted: bool = False,
               complete: bool = True) -> list:
    """Every record of ``topic`` up to the high watermarks read now (the last stable offsets
    under read_committed), read by assignment (no group join). For diagnostics and "everything
    there is" reads; fails the test when the topic does not exist or (``complete``) its end is
    not reached within ``timeout_s``."""
    import time as _time

    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from ocrstream.kafka import consumer_config

    extra = {"isolation.level": "read_uncommitted"} if read_uncommitted else {}
    c = Consumer(consumer_config(s, f"reader-{uuid.uuid4().hex[:8]}", **extra))
    out = []
    try:
        meta = c.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            pytest.fail(f"{topic}: {meta.error if meta else 'no such topic'}")
        ends = {}
        for p in meta.partitions:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = _time.monotonic() + timeout_s
        while ends and _time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                # Transaction markers and aborted records are never returned: ask for the position.
                for tp in c.position([TopicPartition(topic, p) for p in list(ends)]):
                    if tp.offset >= ends[tp.partition]:
                        ends.pop(tp.partition)
                continue
            if m.error():
                continue
            out.append(m)
            if m.offset() + 1 >= ends.get(m.partition(), 0):
                ends.pop(m.partition(), None)
    finally:
        c.close()
    if ends and complete:
        pytest.fail(f"{topic}: partitions {sorted(ends)} not read to their end within {timeout_s}s")
    return out


def committed_to_end(s: Settings, group: str, topic: str) -> bool:
    """True when consumer group ``group`` has committed every partition of ``topic`` up to its
    high watermark (an empty partition counts when nothing is committed): the stage has
    processed everything there is, so "nothing more arrives" can be checked."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    from ocrstream.kafka import consumer_config, topic_partitions, watermarks

    c = Consumer(consumer_config(s, group))
    try:
        parts = [TopicPartition(topic, p) for p in topic_partitions(c, topic)]
        try:
            committed = {tp.partition: tp.offset for tp in c.committed(parts, timeout=10)}
        except KafkaException as exc:
            if exc.args[0].retriable() or exc.args[0].code() == KafkaError.NOT_COORDINATOR:
                return False  # the group coordinator is loading or moving: not known yet, ask again
            raise
        return all(max(committed[tp.partition], 0) == watermarks(c, tp)[1] for tp in parts)
    finally:
        c.close()


def engine_name(s: Settings) -> str:
    """``EngineInfo.name`` of the engine ``s`` builds (``openvino+onnxruntime`` for ``auto`` on an
    x86-64 CPU: detection runtime + recognition runtime)."""
    from ocrstream.engine import resolve_runtime

    det, rec = resolve_runtime(s)
    return det if det == rec else f"{det}+{rec}"


def make_pdf(lines_per_page: list[list[str]], size=(595, 842), fontsize: int = 16) -> bytes:
    """A born-digital PDF with the given text lines on each page (PyMuPDF)."""
    import pymupdf

    doc = pymupdf.open()
    for lines in lines_per_page:
        page = doc.new_page(width=size[0], height=size[1])
        for i, line in enumerate(lines):
            page.insert_text((60, 90 + i * 40), line, fontsize=fontsize, fontname="helv")
    return doc.tobytes()


def settings_env(s: Settings, **extra: str) -> dict[str, str]:
    """Environment for a stage subprocess (``python -m ocrstream.cli STAGE``) equal to ``s``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCRSTREAM_")}
    for name, value in s.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"OCRSTREAM_{name.upper()}"] = json.dumps(value) if isinstance(value, dict) else str(value)
    env.update(extra)
    return env


class StageProcesses:
    """Stage subprocesses (real processes, so they can be SIGKILLed); all killed at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list = []

    def start(self, s: Settings, stage: str, **env: str):
        import subprocess
        import sys

        log = open(self.tmp / f"{stage.replace(' ', '-')}-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "ocrstream.cli", *stage.split()], env=settings_env(s, **env),
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        proc.log_path = log.name
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


@pytest.fixture
def processes(tmp_path):
    runner = StageProcesses(tmp_path)
    yield runner
    runner.stop_all()


MINIO_BIN = Path(os.environ.get("OCRSTREAM_MINIO_BIN", REPO / ".tools" / "bin" / "minio"))


@contextlib.contextmanager
def run_minio(settings: Settings, tmp_path: Path, *, env: dict[str, str] | None = None, args: tuple[str, ...] = (),
              **update):
    """A real MinIO server (built from source by ``make minio``; skips the test without it) on a
    free loopback port, root user ``ocrstream``/``ocrstream-secret``, extra ``env`` and server
    ``args``; yields ``settings`` pointing at it (plus ``update``) once the test bucket exists.
    Terminated on exit."""
    import socket
    import subprocess
    import time as _time

    from devtools.stack import port_open

    if not MINIO_BIN.exists():
        pytest.skip(f"{MINIO_BIN} is absent: run `make minio`")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    full_env = {**os.environ, "MINIO_ROOT_USER": "ocrstream", "MINIO_ROOT_PASSWORD": "ocrstream-secret",
                "MINIO_BROWSER": "off", **(env or {})}
    log = open(tmp_path / "minio.log", "wb")
    proc = subprocess.Popen([str(MINIO_BIN), "server", str(tmp_path / "minio-data"), "--address", f"127.0.0.1:{port}",
                             *args, "--quiet"], env=full_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = _time.monotonic() + 60
        while not port_open("127.0.0.1", port) and proc.poll() is None and _time.monotonic() < deadline:
            _time.sleep(0.2)
        assert port_open("127.0.0.1", port), (tmp_path / "minio.log").read_text(errors="replace")[-2000:]
        s = settings.model_copy(update={"s3_endpoint": f"127.0.0.1:{port}", **update})
        store = ObjectStore(s)
        deadline = _time.monotonic() + 30
        while True:  # the port opens before the object layer is ready
            try:
                store.ensure_bucket()
                break
            except Exception:
                if _time.monotonic() > deadline:
                    raise
                _time.sleep(0.3)
        yield s
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.fixture
def minio(settings, tmp_path):
    """MinIO (:func:`run_minio`) whose bucket notifications go to this test's ``object-events``
    topic on the test broker; the drop-folder prefix of the test bucket is subscribed
    (``s3:ObjectCreated:*``, like ``init-bucket`` in docker-compose.yml).

    Yields settings pointing at MinIO, ``watch_mode=events``. Without the binary the test is
    skipped (``make test`` builds it; the Go module proxy is the only download).
    """
    from minio.notificationconfig import NotificationConfig, PrefixFilterRule, QueueConfig

    env = {"MINIO_NOTIFY_KAFKA_ENABLE_PRIMARY": "on", "MINIO_NOTIFY_KAFKA_BROKERS_PRIMARY": settings.kafka_bootstrap_servers,
           "MINIO_NOTIFY_KAFKA_TOPIC_PRIMARY": settings.topic("object-events")}
    with run_minio(settings, tmp_path, env=env, watch_mode="events") as s:
        ObjectStore(s).client.set_bucket_notification(s.bucket, NotificationConfig(queue_config_list=[QueueConfig(
            queue="arn:minio:sqs::PRIMARY:kafka", events=["s3:ObjectCreated:*"],
            prefix_filter_rule=PrefixFilterRule(s.inbox_prefix))]))
        yield s


def wait_ready(client, timeout_s: float, died=None, every_s: float = 0.2) -> None:
    """Poll ``GET /readyz`` on ``client`` (an httpx client on a gateway's URL) until it answers
    200; fail the test after ``timeout_s`` seconds, or at once when ``died()`` (optional: the
    server process has exited) returns a message."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.TransportError):  # not listening yet
            if client.get("/readyz").status_code == 200:
                return
        gone = died() if died is not None else None
        assert not gone, f"gateway exited before it was ready: {gone}"
        assert time.monotonic() < deadline, f"gateway not ready within {timeout_s:.0f}s"
        time.sleep(every_s)


def publish_files(s: Settings, docs: dict[str, bytes], tmp_path: Path) -> dict[str, str]:
    """Write each of ``docs`` (file name -> bytes) under ``tmp_path``, upload it and publish its
    reference (``DocumentPublisher``: raises unless the broker acknowledged each, acks=all).
    Returns document id -> file name."""
    from producers.publish import DocumentPublisher

    ids = {}
    with DocumentPublisher(s) as pub:
        for name, data in docs.items():
            path = tmp_path / name
            path.write_bytes(data)
            ids[pub.upload_and_publish(path)] = name
    return ids
