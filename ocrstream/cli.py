"""The ``ocrstream`` command.

    ocrstream stack up|down|status     local Kafka broker + SeaweedFS (development: devtools/)
    ocrstream topics apply             create missing topics, report drift
    ocrstream acls show|apply          Kafka ACLs per role (principals: OCRSTREAM_ACL_PRINCIPAL)
    ocrstream submit FILE... [--wait] [--json]
    ocrstream watch                    drop folder -> ingest
    ocrstream splitter|worker|assembler  one stage (for deployment)
    ocrstream webhooks                 completion callbacks (document results -> signed POSTs)
    ocrstream run [--workers N | --gpus 0,1 --workers-per-gpu K]  every stage, as child processes
    ocrstream dlq list|replay          inspect / re-drive dead letters
    ocrstream delete DOCUMENT_ID...    delete source objects and results (deletion requests)
    ocrstream schemas export           write schemas/json/*.schema.json
    ocrstream top                      live worker metrics (pages/s, batch, GPU, lag)
    ocrstream profiles                 model profiles and each tenant's routing (OCRSTREAM_PROFILES, _PROFILE_ROUTES)
    ocrstream compare [--json]         agreement (word F1) between served and shadow profiles, latency per profile
    ocrstream gateway                  HTTP API: POST /v1/documents, GET /v1/documents/{id}[/text|hocr|alto|json]
    ocrstream config                   configuration reference (env vars and defaults)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import KafkaError

from .preflight import ExitCode, PreflightError, check_kafka, check_store, check_uploads_allowed
from .settings import Settings, get_settings

log = logging.getLogger("ocrstream")


def _setup_logging(s: Settings, debug: bool = False) -> None:
    logging.basicConfig(level="DEBUG" if debug else s.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")


def _settings_error(exc) -> str:
    """One line per invalid ``OCRSTREAM_*`` value of a pydantic ``ValidationError``."""
    from pydantic import SecretStr

    lines = []
    for e in exc.errors():
        # the variable is the field; a place inside its JSON value (profile routes) goes to the message
        name = "OCRSTREAM_" + str(e["loc"][0]).upper() if e["loc"] else "OCRSTREAM_"
        where = f" (at {'.'.join(map(str, e['loc'][1:]))})" if len(e["loc"]) > 1 else ""
        field = Settings.model_fields.get(str(e["loc"][0])) if e["loc"] else None
        # A secret's value stays out of the message, as out of every log.
        value = "***" if field is not None and field.annotation in (SecretStr, SecretStr | None) else \
            os.environ.get(name, e.get("input"))
        lines.append(f"ocrstream: {name}={value!r} is invalid{where}: {e['msg']}. Fix or unset it "
                     "(`ocrstream config` lists every setting)")
    return "\n".join(lines)


def _expected_failure(exc: BaseException) -> PreflightError | None:
    """The one-line error for a failure the preflight could not foresee (a broker or store
    that went away mid-command), or None for anything else (which keeps its traceback)."""
    from confluent_kafka import KafkaException

    from producers.publish import PublishError

    from .errors import OcrstreamError, ReasonCode

    if isinstance(exc, KafkaException):
        err: KafkaError = exc.args[0]
        if err.code() in _KAFKA_AWAY:
            return PreflightError(ExitCode.KAFKA_UNREACHABLE, f"Kafka became unreachable mid-command ({err.str()}). "
                                  "Check the brokers at OCRSTREAM_KAFKA_BOOTSTRAP_SERVERS and run it again")
        if err.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED,
                          KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
                          KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED):
            return PreflightError(ExitCode.KAFKA_REFUSED, f"the Kafka broker refused: {err.str()}. Check the "
                                  "credentials (OCRSTREAM_KAFKA_SASL_*) and the principal's ACLs")
        return PreflightError(ExitCode.FAILED, f"Kafka refused the request: {err.str()}")
    if isinstance(exc, PublishError):
        return PreflightError(ExitCode.FAILED, str(exc))
    if isinstance(exc, OcrstreamError) and exc.code in (ReasonCode.STORAGE_ERROR, ReasonCode.STORAGE_TIMEOUT):
        return PreflightError(ExitCode.STORE_UNREACHABLE, f"object store failed mid-command: {exc}. Check "
                                                          "OCRSTREAM_S3_ENDPOINT and run the command again")
    return None


# Kafka error codes that mean "the brokers went away" (mid-command; the preflight covers the start).
_KAFKA_AWAY = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT,
                         KafkaError._RESOLVE, KafkaError._MSG_TIMED_OUT, KafkaError.REQUEST_TIMED_OUT})


def cmd_stack(args, s: Settings) -> int:
    # The local stack is a developer tool (package devtools/, dependencies in the `dev` extra), not
    # part of the runtime: imported here only, so an installation without it (the container images)
    # runs every other command.
    try:
        from devtools.stack import Stack, StackError
    except ImportError as e:
        print(f"ocrstream stack: the development tools are not installed ({e}). The local stack is for "
              "development only: from a checkout, pip install -e '.[dev]' (or `make venv`).", file=sys.stderr)
        return 2

    if args.brokers:
        s = s.model_copy(update={"stack_brokers": args.brokers})
    stack = Stack(s)
    try:
        if args.action == "up":
            stack.up()
        elif args.action == "down":
            stack.down()
    except StackError as e:
        print(f"ocrstream stack {args.action}: {e}", file=sys.stderr)
        return 1
    for st in stack.status():
        print(f"{st.name:7} {'running' if st.running else 'stopped':8} {st.address:22} pid={st.pid or '-'}")
    if hasattr(stack.kafka, "nodes") and args.action != "down":
        # One address would do to bootstrap, but not while that node is down.
        print(f"clients: export OCRSTREAM_KAFKA_BOOTSTRAP_SERVERS={stack.kafka.address}")
    return 0 if args.action == "down" or all(st.running for st in stack.status()) else 1


def cmd_topics(args, s: Settings) -> int:
    from topology import PRODUCTION_REPLICATION_FACTOR, apply_topics, fit_replication, topic_specs

    from .kafka import make_admin

    check_kafka(s, quiet=not args.debug)

    admin = make_admin(s)
    # No --replication-factor: the production default (3, min ISR 2), 1 on a single broker.
    # Given: exactly that, never lowered (production jobs pass it, so an outage cannot lower it).
    fit = args.replication_factor is None
    specs = topic_specs(args.replication_factor or PRODUCTION_REPLICATION_FACTOR, retention=s.retention(),
                        tenants=tuple(s.tenants),
                        profiles=tuple(s.profiles), pages_partitions=s.pages_partitions)
    brokers = len(admin.list_topics(timeout=30).brokers)
    try:
        _, note = fit_replication(specs, brokers) if fit else (specs, "")
    except ValueError as exc:
        print(f"ocrstream topics apply: {exc}", file=sys.stderr)
        return 1
    print(note or f"replication factor {args.replication_factor} (as given; {brokers} brokers)")
    reports = apply_topics(admin, specs, s.topic_prefix, fit=fit)
    for r in reports:
        print(f"{r.topic:32} {r.action:8} {'; '.join(r.drift)}")
    return 1 if any(r.action == "drift" for r in reports) and args.strict else 0


def cmd_acls(args, s: Settings) -> int:
    from topology import acl_grants, apply_acls

    from .kafka import make_admin

    grants = acl_grants(s.topic_prefix, s.group_prefix, tenants=tuple(s.tenants), profiles=tuple(s.profiles))
    principal_of = lambda role: s.acl_principal.format(role=role)  # noqa: E731
    for g in grants:
        print(f"{principal_of(g.role):32} {g.operation:16} {g.resource}:{g.pattern}:{g.name}")
    if args.action == "apply":
        check_kafka(s, quiet=not args.debug)
        print(f"created {apply_acls(make_admin(s), grants, principal_of)} ACL bindings")
    return 0


def cmd_submit(args, s: Settings) -> int:
    from producers.submit import submit_files

    for f in map(Path, args.files):
        if not f.is_file():
            raise PreflightError(ExitCode.NO_INPUT, f"no such file: {f}")
    if args.webhook is not None:
        from .errors import OcrstreamError
        from .webhooks import check_webhook_url

        try:  # before anything is uploaded: the splitter would refuse the document
            check_webhook_url(s, args.webhook, s.tenant)
        except OcrstreamError as exc:
            raise PreflightError(ExitCode.TIMEOUT, f"--webhook: {exc}") from None  # a usage error: exit 2
    check_uploads_allowed(s)
    check_kafka(s, [s.tenant_topic(s.tenant, "ingest"), *([s.tenant_topic(s.tenant, "document-results")] if args.wait else [])], quiet=not args.debug)
    check_store(s)

    return submit_files(s, [Path(f) for f in args.files], wait=args.wait, as_json=args.json,
                        timeout_s=args.timeout or None, dpi=args.dpi, pages=args.pages, no_cache=args.no_cache,
                        webhook_url=args.webhook, profile=args.profile, priority=args.priority)


def _profile_name(text: str) -> str:
    """argparse type of ``submit --profile``: a valid profile name, or a usage error (exit 2)."""
    from topology import check_profile_name

    try:
        return check_profile_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _page_ranges(text: str) -> str:
    """argparse type of ``submit --pages``: the canonical ranges, or a usage error (exit 2)."""
    from .errors import OcrstreamError
    from .page_ranges import normalize_page_ranges

    try:
        return normalize_page_ranges(text)
    except OcrstreamError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def cmd_stage(args, s: Settings) -> int:
    """Run one stage; its exit status: 0 after SIGTERM/SIGINT, 2 after a fatal Kafka error (restart it)."""
    if args.command == "worker":
        from consumers.worker import run_worker as run
    elif args.command == "splitter":
        from consumers.splitter import run_splitter as run
    elif args.command == "assembler":
        from consumers.assembler import run_assembler as run
    elif args.command == "watch":
        from producers.watch import run_watcher as run
    elif args.command == "webhooks":
        from consumers.webhooks import run_webhooks as run
    else:
        raise SystemExit(f"unknown stage {args.command}")
    return run(s) or 0


def cmd_sink(args, s: Settings) -> int:
    """Run a sink stage; exit status as :func:`cmd_stage`. ``parquet --compact`` compacts instead."""
    if args.compact:
        if args.kind != "parquet":
            raise SystemExit("--compact applies to `sink parquet`")
        import orjson

        from consumers.sinks.parquet import compact_closed_days

        check_store(s)
        for report in compact_closed_days(s, args.date):
            print(orjson.dumps(report).decode())
        return 0
    if args.kind == "outbox":
        from consumers.sinks.outbox import run_outbox_sink as run
    elif args.kind == "parquet":
        from consumers.sinks.parquet import run_parquet_sink as run
    else:
        raise SystemExit(f"unknown sink {args.kind}")
    return run(s) or 0


def _find_result(args, s: Settings):
    from producers.results import find_result

    check_kafka(s, [s.tenant_topic(s.tenant, "document-results")], quiet=not args.debug)
    return find_result(s, args.document_id, timeout_s=args.timeout)


def cmd_status(args, s: Settings) -> int:
    """One line per document: its status, pages, reason code; exit 1 when failed or not found."""
    result = _find_result(args, s)
    if result is None:
        print(f"{args.document_id}: no result (not completed yet, unknown, or deleted)", file=sys.stderr)
        return 1
    pages_ok = sum(p.status == "succeeded" for p in result.pages)
    code = f" {result.error.code}: {result.error.message}" if result.error else ""
    source = f"s3://{result.source.bucket}/{result.source.key}" if result.source else "-"
    completed = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(result.completed_at / 1000))
    print(f"{result.document_id} {result.status} pages {pages_ok}/{result.page_count} completed {completed} "
          f"source {source}{code}")
    return 0 if result.status == "succeeded" else 1


def cmd_result(args, s: Settings) -> int:
    """A document's result as json, txt, hocr, alto or a searchable PDF (to ``-o`` or stdout)."""
    from ocrstream.outputs import document_text, searchable_pdf, to_alto, to_hocr
    from schemas import encode

    result = _find_result(args, s)
    if result is None:
        print(f"{args.document_id}: no result (not completed yet, unknown, or deleted)", file=sys.stderr)
        return 1
    if args.format == "pdf":
        if result.source is None or result.status != "succeeded":
            print(f"{args.document_id}: {result.status}, no source to lay text on", file=sys.stderr)
            return 1
        from ocrstream.sources import check_source
        from ocrstream.storage import ObjectStore

        check_store(s)
        src = result.source
        data = ObjectStore(s).get_bytes(src.bucket, check_source(s, src.bucket, src.key, s.tenant),
                                        s.max_object_bytes, src.version_id, etag=src.etag)
        body = searchable_pdf(result, data, fallback_dpi=s.render_dpi, max_page_pixels=s.max_page_pixels)
    else:
        body = {"json": lambda: encode(result) + b"\n", "txt": lambda: document_text(result).encode(),
                "hocr": lambda: to_hocr(result).encode(), "alto": lambda: to_alto(result).encode()}[args.format]()
    if args.output and args.output != "-":
        Path(args.output).write_bytes(body)
    else:
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
    return 0


WORKER_MEMORY_BYTES = 1 << 30
"""Memory to leave per CPU worker when choosing how many to start: measured RSS 762-773 MiB over
1,001 pages (README, ``bench/throughput.py memory``), rounded up for larger pages."""


def default_workers(cpu_count: int, available_bytes: int | None = None) -> int:
    """How many CPU workers ``ocrstream run`` starts without ``--workers``: one per core (each
    then runs one inference thread, see :func:`worker_env`), fewer when the available memory
    (bytes) cannot hold :data:`WORKER_MEMORY_BYTES` each. Why one per core: on this project's
    2-core machines 2 workers x 1 thread beat 1 worker x 2 threads on both runtimes (README,
    performance table): a single page's det+rec does not keep two threads busy, two pages do."""
    n = max(1, cpu_count)
    if available_bytes is not None:
        n = min(n, max(1, available_bytes // WORKER_MEMORY_BYTES))
    return n


def worker_env(s: Settings, n: int, workers: int, gpus: list[int], cpu_count: int) -> dict[str, str]:
    """Settings that differ between the ``workers`` OCR worker processes of ``ocrstream run``.

    Args:
        n: this worker's index, 0-based.
        gpus: GPU indices; worker ``n`` gets GPU ``gpus[n % len(gpus)]`` (so with
            ``--workers-per-gpu k`` every GPU gets k engine processes). Empty: the configured
            ``engine_device``.
        cpu_count: cores of the host.

    Returns:
        ``OCRSTREAM_*`` variables: engine device and, on CPU workers with ``engine_threads`` 0,
        intra-op threads = cores / workers.
    """
    env: dict[str, str] = {}
    if gpus:
        gpu = gpus[n % len(gpus)]
        env["OCRSTREAM_ENGINE_DEVICE"] = f"gpu:{gpu}" if s.engine == "paddle" else f"cuda:{gpu}"
    elif not s.engine_threads and s.engine_device == "cpu":
        # Share the cores: N workers each using every core oversubscribe the CPU, and
        # ONNX Runtime's spinning intra-op threads then slow every worker down.
        env["OCRSTREAM_ENGINE_THREADS"] = str(max(1, cpu_count // workers))
    return env


class _Restarting:
    """Placeholder for a child waiting out its restart delay (quacks like a dead Popen)."""

    returncode = None

    def __init__(self, at: float) -> None:
        self.at = at

    def poll(self) -> None:
        return None

    def send_signal(self, signum) -> None:
        pass

    def wait(self, timeout=None) -> int:
        return 0

    def kill(self) -> None:
        pass


def cmd_run(args, s: Settings) -> int:
    """Start every stage as a child process; restart a crashed one; stop all on SIGTERM/SIGINT."""
    gpus = [int(g) for g in args.gpus.split(",") if g.strip()] if args.gpus else []
    if gpus:
        n_workers = len(gpus) * args.workers_per_gpu
    elif args.workers:
        n_workers = args.workers
    else:
        import psutil

        n_workers = default_workers(os.cpu_count() or 1, psutil.virtual_memory().available)
    # The drop folder's users read the outbox: its sink runs with the watcher.
    stages = (["splitter", "assembler"] + ["worker"] * n_workers + ([] if args.no_watch else ["watch", "sink outbox"])
              + ([] if args.no_analytics else ["sink parquet"])
              + (["webhooks"] if s.webhook_allowed_hosts else []))  # callbacks only where some are allowed
    procs: dict[int, tuple[str, subprocess.Popen]] = {}
    started: dict[int, float] = {}
    delays: dict[int, float] = {}  # restart delay per child: 1 s doubling to 60 s, reset after 60 s up
    stopping = False

    def start(i: int, stage: str) -> None:
        env = dict(os.environ)
        if stage == "worker":
            env["OCRSTREAM_WORKER_ID"] = f"{s.worker_id}-w{i}"  # stable across restarts: transactional.id
            env.update(worker_env(s, i - 2, n_workers, gpus, os.cpu_count() or 1))
        if s.http_port:  # one port per child: http_port, http_port+1, ...
            env["OCRSTREAM_HTTP_PORT"] = str(s.http_port + i)
        procs[i] = (stage, subprocess.Popen([sys.executable, "-m", "ocrstream.cli", *stage.split()], env=env))
        started[i] = time.monotonic()

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for i, stage in enumerate(stages):
        start(i, stage)
    log.info("started %s", ", ".join(stages))
    while not stopping:
        time.sleep(0.5)
        for i, (stage, proc) in list(procs.items()):
            if proc.poll() is not None and not stopping:
                # A child that keeps dying is restarted ever more slowly (exponential backoff), so a
                # crash loop shows in the logs and in process_start_time_seconds without spinning.
                up_s = time.monotonic() - started[i]
                delay = 1.0 if up_s > 60 else min(60.0, delays.get(i, 0.5) * 2)
                delays[i] = delay
                log.warning("%s exited with %s after %.0fs: restarting in %.0fs", stage, proc.returncode, up_s, delay)
                procs[i] = (stage, _Restarting(time.monotonic() + delay))
            elif isinstance(proc, _Restarting) and not stopping and time.monotonic() >= proc.at:
                start(i, stage)
    for stage, proc in procs.values():
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 40
    for stage, proc in procs.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


def cmd_dlq(args, s: Settings) -> int:
    from consumers.deadletters import ReplayError, list_dead_letters, replay_dead_letters

    check_kafka(s, [s.topic("dead-letters")], quiet=not args.debug)

    if args.action == "list":
        for dl in list_dead_letters(s, limit=args.limit):
            print(f"{dl.failed_at} {dl.stage:9} {dl.reason:26} {dl.topic}[{dl.partition}]@{dl.offset} "
                  f"doc={dl.document_id or '-'} {dl.message[:100]}")
        return 0
    try:
        n = replay_dead_letters(s, reason=args.reason, limit=args.limit)
    except ReplayError as exc:
        print(f"replay stopped: {exc} (nothing after it was committed; run it again after the fix)", file=sys.stderr)
        return 1
    print(f"replayed {n} dead letter(s)")
    return 0


def cmd_delete(args, s: Settings) -> int:
    from producers.delete import delete_documents

    check_kafka(s, [s.tenant_topic(s.tenant, "document-results")], quiet=not args.debug)
    if not args.keep_object:
        check_store(s)
    missing = 0
    for d in delete_documents(s, args.document_ids, keep_object=args.keep_object):
        if not d.found:
            missing += 1
            print(f"{d.document_id}  no result (not finished, or already deleted): nothing done", file=sys.stderr)
        else:
            print(f"{d.document_id}  result tombstoned; object {d.object_deleted or 'kept'}")
    return ExitCode.FAILED if missing else ExitCode.OK


def cmd_schemas(args, s: Settings) -> int:
    from schemas import export_json_schemas

    for p in export_json_schemas():
        print(p)
    return 0


def cmd_top(args, s: Settings) -> int:
    from .top import run_top

    check_kafka(s, [s.topic("metrics")], quiet=not args.debug)

    run_top(s, once=args.once)
    return 0


def cmd_profiles(args, s: Settings) -> int:
    """Each model profile (what it sets, a worker's effective engine settings) and each tenant's
    route (allowed profiles, A/B split, shadow); JSON with ``--json``."""
    import orjson

    from topology import worker_group

    from .profiles import describe_profiles

    routes = {tenant: route.model_dump() for tenant, route in s.profile_routes.items()}
    if args.json:
        print(orjson.dumps({"profiles": describe_profiles(s), "routes": routes}).decode())
        return 0
    for p in describe_profiles(s):
        sets = ", ".join(f"{k}={v}" for k, v in p["settings"].items()) or "(the engine settings)"
        print(f"profile {p['name']}: {sets}" + (f"  # {p['description']}" if p["description"] else ""))
        print(f"  topic {s.page_topic(p['name'])}, worker group {s.group(worker_group(p['name']))}")
    if not routes:
        print("routes: none: every tenant's documents go to the default profile")
    for tenant, r in routes.items():
        who = {"-": "default tenant", "*": "other tenants"}.get(tenant, f"tenant {tenant}")
        allowed = r["allowed"] if r["allowed"] is not None else sorted(r["split"])
        shadow = f", shadow {r['shadow']} for {r['shadow_share']:.0%}" if r["shadow"] else ""
        print(f"route {who}: may name {', '.join(allowed)}; split {r['split']}{shadow}")
    return 0


def cmd_compare(args, s: Settings) -> int:
    """Agreement between served and shadow profiles, latency per profile (:mod:`ocrstream.compare`)."""
    import orjson

    from topology import SHADOW_RESULTS

    from .compare import collect, format_report, report, since_ms_ago

    check_kafka(s, [s.topic(SHADOW_RESULTS), *(s.tenant_topic(t, "document-results") for t in (None, *s.tenants))],
                quiet=not args.debug)
    r = report(collect(s, since_ms_ago(args.since_hours), timeout_s=args.timeout))
    print(orjson.dumps(r).decode() if args.json else format_report(r))
    return 0


def cmd_gateway(args, s: Settings) -> int:
    """The HTTP gateway until SIGTERM/SIGINT (0); setting, broker, topic and store failures exit as
    any command's do."""
    tenants = list(dict.fromkeys(s.gateway_tenants().values()))
    if not tenants:
        raise PreflightError(ExitCode.BAD_SETTING, "OCRSTREAM_GATEWAY_API_KEYS is empty: set `key=tenant,...` "
                             "(`key=-` for the default tenant)")
    if None in tenants:
        check_uploads_allowed(s)
    check_kafka(s, [s.page_topic(lane="batch"), s.page_topic(lane="interactive"),  # each lane's backlog
                    *(s.tenant_topic(t, n) for t in tenants for n in ("ingest", "document-results"))],
                quiet=not args.debug)
    check_store(s)
    from producers.gateway import serve

    return serve(s)


def cmd_config(args, s: Settings) -> int:
    from .settings import settings_table

    print(settings_table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ocrstream", description="Streaming OCR on Kafka. Exit codes: "
                                + ", ".join(f"{c.value} {c.name.lower()}" for c in ExitCode) + ".")
    p.add_argument("--debug", action="store_true", help="log at DEBUG and show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    # `--debug` after the subcommand too (SUPPRESS: absent there, the top-level value stands).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def add(name: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)

    st = add("stack", help="local Kafka broker + S3 object store (development only)")
    st.add_argument("action", choices=["up", "down", "status"])
    st.add_argument("--brokers", type=int, default=None, choices=range(1, 10), metavar="N",
                    help="Kafka nodes (default OCRSTREAM_STACK_BROKERS, 1); 3 = a replicated KRaft cluster")
    st.set_defaults(fn=cmd_stack)
    tp = add("topics", help="create missing topics and report drift")
    tp.add_argument("action", choices=["apply"])
    tp.add_argument("--replication-factor", type=int, default=None,
                    help="copies of each partition (default 3 with min.insync.replicas 2, lowered to 1 on a "
                         "single-broker cluster; a given value is never lowered)")
    tp.add_argument("--strict", action="store_true", help="exit 1 on drift")
    tp.set_defaults(fn=cmd_topics)
    ac = add("acls", help="Kafka ACLs per role, from the topology (`show` prints, `apply` creates)")
    ac.add_argument("action", choices=["show", "apply"])
    ac.set_defaults(fn=cmd_acls)
    sm = add("submit", help="upload files and publish their references")
    sm.add_argument("files", nargs="+")
    sm.add_argument("--wait", action="store_true", help="wait for every document result")
    sm.add_argument("--json", action="store_true", help="print results as JSON Lines")
    sm.add_argument("--timeout", type=float, default=0, help="seconds to wait (0 = no limit)")
    sm.add_argument("--dpi", type=int, default=None, help="PDF render DPI for these documents")
    sm.add_argument("--pages", type=_page_ranges, default=None, metavar="RANGES",
                    help='pages to OCR of each document, 1-based inclusive ranges, e.g. "1-3,7" (default: all)')
    sm.add_argument("--no-cache", action="store_true",
                    help="OCR the files even when the result cache holds their results (the fresh results are stored)")
    sm.add_argument("--webhook", default=None, metavar="URL",
                    help="completion callback: `ocrstream webhooks` POSTs each document's signed result summary "
                         "here (a host of OCRSTREAM_WEBHOOK_ALLOWED_HOSTS)")
    sm.add_argument("--profile", type=_profile_name, default=None,
                    help="model profile to OCR with (OCRSTREAM_PROFILES; the tenant must be allowed it; "
                         "default: the tenant's routing)")
    sm.add_argument("--priority", choices=["interactive", "batch"], default=None,
                    help="priority lane: interactive pages are OCR'd before every batch page (the tenant must be "
                         "allowed it: OCRSTREAM_TENANT_LANES; default: batch)")
    sm.set_defaults(fn=cmd_submit)
    for name, text in [("worker", "OCR worker (consumer group member)"), ("splitter", "documents -> pages"),
                       ("assembler", "page results -> document results"), ("watch", "drop folder -> ingest"),
                       ("webhooks", "completion callbacks: document results -> signed POSTs (OCRSTREAM_WEBHOOK_*)")]:
        add(name, help=text).set_defaults(fn=cmd_stage)
    sk = add("sink", help="write document results where users look: `outbox` (files next to the drop folder), "
                          "`parquet` (analytics tables)")
    sk.add_argument("kind", choices=["outbox", "parquet"])
    sk.add_argument("--compact", action="store_true",
                    help="parquet: merge each date folder into one file (default: every date before today, UTC)")
    sk.add_argument("--date", default=None, help="parquet --compact: only this date (YYYY-MM-DD)")
    sk.set_defaults(fn=cmd_sink)
    for name, text in [("status", "a document's status (exit 1: failed or no result)"),
                       ("result", "a document's result: json, txt, hocr, alto or a searchable pdf")]:
        cmd = add(name, help=text)
        cmd.add_argument("document_id")
        cmd.add_argument("--timeout", type=float, default=30.0, help="seconds to read the results topic")
        if name == "result":
            cmd.add_argument("--format", choices=["json", "txt", "hocr", "alto", "pdf"], default="json")
            cmd.add_argument("-o", "--output", default=None, help="file to write (default: stdout)")
        cmd.set_defaults(fn=cmd_status if name == "status" else cmd_result)
    rn = add("run", help="start every stage (local use)")
    rn.add_argument("--workers", type=int, default=None,
                    help="OCR worker processes (CPU); default: one per core, as memory allows (1 GiB each)")
    rn.add_argument("--gpus", default="", help="GPU indices, e.g. 0,1: run --workers-per-gpu workers on each")
    rn.add_argument("--workers-per-gpu", type=int, default=1,
                    help="engine processes per GPU (each a consumer-group member); with --gpus")
    rn.add_argument("--no-watch", action="store_true", help="no drop-folder watcher (nor its outbox sink)")
    rn.add_argument("--no-analytics", action="store_true", help="no Parquet analytics sink")
    rn.set_defaults(fn=cmd_run)
    dq = add("dlq", help="dead letters")
    dq.add_argument("action", choices=["list", "replay"])
    dq.add_argument("--reason", default=None, help="only this reason code (replay)")
    dq.add_argument("--limit", type=int, default=1000)
    dq.set_defaults(fn=cmd_dlq)
    de = add("delete", help="delete documents: source object and result (deletion requests)")
    de.add_argument("document_ids", nargs="+")
    de.add_argument("--keep-object", action="store_true", help="tombstone the result only")
    de.set_defaults(fn=cmd_delete)
    sc = add("schemas", help="JSON Schema files")
    sc.add_argument("action", choices=["export"])
    sc.set_defaults(fn=cmd_schemas)
    tp2 = add("top", help="live view of worker metrics (metrics topic)")
    tp2.add_argument("--once", action="store_true", help="read for 5 s, print one table, exit")
    tp2.set_defaults(fn=cmd_top)
    pf = add("profiles", help="model profiles and each tenant's routing (OCRSTREAM_PROFILES, OCRSTREAM_PROFILE_ROUTES)")
    pf.add_argument("--json", action="store_true", help="one JSON object")
    pf.set_defaults(fn=cmd_profiles)
    cp = add("compare", help="agreement (word F1) between served and shadow profiles, latency per profile")
    cp.add_argument("--since-hours", type=float, default=24.0,
                    help="results and samples of the last N hours (default 24; the topics keep 7 days)")
    cp.add_argument("--timeout", type=float, default=120.0, help="seconds to read each topic at most")
    cp.add_argument("--json", action="store_true", help="one JSON object instead of the tables")
    cp.set_defaults(fn=cmd_compare)
    add("gateway", help="HTTP API for submitting documents and reading results (OCRSTREAM_GATEWAY_*)").set_defaults(
        fn=cmd_gateway)
    add("config", help="print the configuration reference (env vars, defaults)").set_defaults(fn=cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ocrstream`` console script."""
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    try:
        s = get_settings()
    except ValidationError as exc:
        if args.debug:
            raise
        print(_settings_error(exc), file=sys.stderr)
        return ExitCode.BAD_SETTING
    args.debug = args.debug or s.log_level.upper() == "DEBUG"
    _setup_logging(s, args.debug)
    if args.fn in (cmd_stage, cmd_sink, cmd_run):
        return args.fn(args, s)  # stages keep their own exit statuses (0, 2, 3) for their supervisor
    try:
        return args.fn(args, s)
    except Exception as exc:  # noqa: BLE001 - expected failures become one line; bugs keep their traceback
        failure = exc if isinstance(exc, PreflightError) else _expected_failure(exc)
        if failure is None or args.debug:
            raise
        print(f"ocrstream {args.command}: {failure}", file=sys.stderr)
        return failure.code


if __name__ == "__main__":
    sys.exit(main())
