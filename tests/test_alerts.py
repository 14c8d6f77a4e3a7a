"""Static checks of the Prometheus alert rules, deploy/prometheus/alerts.yml.

No Prometheus runs on the development machines; ``promtool check rules`` runs when promtool is
on PATH and is skipped otherwise. What always runs:

- the file has the rule-file shape (groups of rules with alert, expr, labels.severity and the
  summary/description/runbook annotations), durations parse, brackets balance;
- every series an expression names is exported by ocrstream/metrics.py (or prometheus-client's
  process collector), or is on the short, explicit list of external series below, so a renamed
  or misspelt metric fails here instead of leaving an alert that can never fire;
- ``reason`` matchers use real reason codes, and ``$labels.X`` in the annotations is a label the
  expression's result keeps;
- the rules cover restart loops, stalled loops, incomplete documents, dead letters (internal
  errors separately from bad input) and poison pages;
- deploy/prometheus/prometheus.yml loads the file and docker-compose.yml mounts it where
  Prometheus looks.
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ocrstream.errors import ReasonCode

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
COMPOSE = ROOT / "docker-compose.yml"

# Series that the rules may use although ocrstream does not export them, with their labels.
# Keep this short: each entry is a rule that silently never fires where its exporter is absent.
EXTERNAL_SERIES = {
    # kube-state-metrics (Kubernetes only): container restarts, including processes that die
    # before their first scrape.
    "kube_pod_container_status_restarts_total": {"namespace", "pod", "container", "uid"},
}
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}
SEVERITIES = {"critical", "warning", "info"}
RULE_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
ANNOTATIONS = ("summary", "description", "runbook")
DURATION = r"(?:\d+(?:ms|s|m|h|d|w|y))+"

AGGREGATIONS = {"sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk",
                "quantile", "count_values", "limitk", "limit_ratio"}
PROMQL_WORDS = AGGREGATIONS | {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "atan2", "inf", "nan",
    # functions (also dropped because a "(" follows them; listed for "rate (x)" and the like)
    "rate", "irate", "increase", "delta", "idelta", "deriv", "changes", "resets", "time", "timestamp",
    "vector", "scalar", "absent", "absent_over_time", "present_over_time", "avg_over_time",
    "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "last_over_time",
    "quantile_over_time", "stddev_over_time", "stdvar_over_time", "histogram_quantile",
    "label_replace", "label_join", "clamp", "clamp_min", "clamp_max", "abs", "ceil", "floor", "round",
    "sort", "sort_desc", "predict_linear", "holt_winters", "day_of_week", "hour", "minute",
}
SAMPLE_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                   "gauge": ("",), "summary": ("", "_sum", "_count", "_created"), "info": ("_info",),
                   "stateset": ("",), "gaugehistogram": ("_bucket", "_gsum", "_gcount"), "unknown": ("",)}


# --------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=None)
def alerts_doc() -> dict:
    return yaml.safe_load(ALERTS.read_text())


def rules(doc: dict | None = None) -> list[dict]:
    doc = alerts_doc() if doc is None else doc
    return [r for g in doc["groups"] for r in g["rules"]]


@functools.lru_cache(maxsize=None)
def exported_labels() -> dict[str, set[str]]:
    """Series name (``_total``, ``_bucket``... included) -> label names, for every series the
    default registry exports once ocrstream/metrics.py is imported."""
    import prometheus_client

    import ocrstream.metrics as m

    labels: dict[str, set[str]] = {}
    by_family = {obj._name: set(obj._labelnames) for obj in vars(m).values()
                 if isinstance(obj, prometheus_client.metrics.MetricWrapperBase)}
    for family in prometheus_client.REGISTRY.collect():
        names = {family.name + s for s in SAMPLE_SUFFIXES.get(family.type, ("",))}
        names |= {s.name for s in family.samples}
        for name in names:
            labels[name] = by_family.get(family.name, set()) | ({"le"} if name.endswith("_bucket") else set())
    # The process collector reads /proc: absent on a non-Linux test host, present in the images.
    labels.setdefault("process_start_time_seconds", set())
    return labels


def strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, aggregations,
    keywords, label names (in ``{...}`` and grouping clauses) or durations."""
    names = set(re.findall(r'__name__\s*=\s*"([A-Za-z_:][\w:]*)"', expr))
    e = strip_strings(expr)
    e = re.sub(r"\{[^}]*\}", " ", e)                                                     # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)                                                    # ranges, subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)  # grouping labels
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def unknown_series(rule_list: list[dict]) -> dict[str, set[str]]:
    """Alert -> names in its expression that nothing exports (and that are not external)."""
    known = set(exported_labels()) | set(EXTERNAL_SERIES)
    out = {}
    for r in rule_list:
        bad = promql_metrics(str(r["expr"])) - known
        if bad:
            out[r["alert"]] = bad
    return out


def result_labels(expr: str) -> set[str] | None:
    """Labels the result of ``expr`` can carry when it aggregates: the union of its ``by (...)``
    lists, or none for an aggregation without ``by``/``without``. None when it does not aggregate
    (the series' own labels survive) or uses ``without``."""
    e = strip_strings(expr)
    if re.search(r"\bwithout\s*\(", e):
        return None
    by_lists = re.findall(r"\bby\s*\(([^)]*)\)", e)
    if by_lists:
        return {label.strip() for lst in by_lists for label in lst.split(",") if label.strip()}
    if re.search(r"\b(" + "|".join(AGGREGATIONS) + r")\s*\(", e):
        return set()
    return None


def series_labels(name: str) -> set[str]:
    if name in EXTERNAL_SERIES:
        return EXTERNAL_SERIES[name] | TARGET_LABELS
    return exported_labels().get(name, set()) | TARGET_LABELS


def template_labels(rule: dict) -> set[str]:
    texts = [str(v) for v in (rule.get("annotations") or {}).values()]
    texts += [str(v) for v in (rule.get("labels") or {}).values()]
    return {label for t in texts for label in re.findall(r"\$labels\.(\w+)", t)}


def reason_values(expr: str) -> set[str]:
    out = set()
    for op, value in re.findall(r'\breason\s*(=~|!~|!=|=)\s*"([^"]*)"', expr):
        if op in ("=~", "!~"):
            assert re.fullmatch(r"[a-z_]+(\|[a-z_]+)*", value), f"reason regex {value!r}: use a plain a|b|c list"
            out |= set(value.split("|"))
        else:
            out.add(value)
    return out


def balanced(text: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for ch in strip_strings(text):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack


# --------------------------------------------------------------------------- the extraction itself


def test_promql_metric_extraction():
    assert promql_metrics('histogram_quantile(0.95, sum by (le) (rate(a_bucket{x=~"y",le!="1"}[5m])))') == {"a_bucket"}
    assert promql_metrics("sum(rate(b_total[5m])) / sum(rate(c_total[5m])) > bool 0") == {"b_total", "c_total"}
    assert promql_metrics("max by (topic, partition) (d) unless on (topic) e offset 1h30m") == {"d", "e"}
    assert promql_metrics("changes(f[15m]) > 3 and on (job, instance) max_over_time(g[15m:1m])") == {"f", "g"}
    assert promql_metrics("time() - (h > 0) > 900") == {"h"}
    assert promql_metrics('sum (rate ({__name__="i_total", stage="worker"}[5m])) by (stage) * 60') == {"i_total"}
    assert promql_metrics("a / on (stage) group_left b and count without (pod) (c) >= 5e3") == {"a", "b", "c"}


def test_result_labels():
    assert result_labels("sum by (job, stage) (rate(x[5m])) or sum by (job, stage) (y)") == {"job", "stage"}
    assert result_labels("sum(rate(x[5m])) / sum(rate(y[5m])) > 0.1") == set()
    assert result_labels("x == 1") is None
    assert result_labels("changes(x[15m]) > 3 and on (job, instance) max_over_time(y[15m])") is None


# --------------------------------------------------------------------------- shape


def test_alerts_file_shape():
    doc = alerts_doc()
    assert set(doc) == {"groups"}, f"top-level keys {sorted(doc)}"
    group_names = [g["name"] for g in doc["groups"]]
    assert len(group_names) == len(set(group_names)), f"duplicate group names {group_names}"
    names = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit", "labels"}, group["name"]
        assert group["rules"], f"group {group['name']} has no rules"
        for r in group["rules"]:
            assert "record" not in r, f"recording rule in {group['name']}: keep them in another file"
            assert set(r) <= RULE_KEYS, f"{r.get('alert')}: unknown keys {sorted(set(r) - RULE_KEYS)}"
            name = r.get("alert")
            assert isinstance(name, str) and re.fullmatch(r"Ocrstream[A-Z]\w+", name), f"alert name {name!r}"
            names.append(name)
            assert isinstance(r.get("expr"), str) and r["expr"].strip(), f"{name}: no expr"
            assert balanced(r["expr"]), f"{name}: unbalanced brackets in {r['expr']!r}"
            for duration in re.findall(r"\[([^\]]*)\]", strip_strings(r["expr"])):
                assert re.fullmatch(rf"{DURATION}(?::{DURATION})?", duration.strip()), f"{name}: range [{duration}]"
            for duration in re.findall(r"\boffset\s+(\S+)", strip_strings(r["expr"])):
                assert re.fullmatch(DURATION, duration), f"{name}: offset {duration}"
            for key in ("for", "keep_firing_for"):
                if key in r:
                    assert re.fullmatch(DURATION, str(r[key])), f"{name}: {key}: {r[key]!r}"
            assert (r.get("labels") or {}).get("severity") in SEVERITIES, f"{name}: severity must be one of {SEVERITIES}"
            annotations = r.get("annotations") or {}
            for key in ANNOTATIONS:
                assert isinstance(annotations.get(key), str) and annotations[key].strip(), f"{name}: annotation {key}"
            for key, text in annotations.items():
                assert text.count("{{") == text.count("}}"), f"{name}: {key}: unbalanced template braces"
                for var in re.findall(r"\{\{[^}]*?\$(\w+)", text):
                    assert var in ("labels", "value", "externalLabels"), f"{name}: {key}: ${var}"
    assert len(names) == len(set(names)), f"duplicate alert names {sorted(n for n in names if names.count(n) > 1)}"


# --------------------------------------------------------------------------- series and labels


def test_alerts_use_only_exported_series():
    unknown = unknown_series(rules())
    assert not unknown, f"not exported by ocrstream/metrics.py nor listed in EXTERNAL_SERIES: {unknown}"
    for r in rules():
        assert promql_metrics(r["expr"]), f"{r['alert']}: no metric in {r['expr']!r}"
    used = set().union(*(promql_metrics(r["expr"]) for r in rules()))
    unused = set(EXTERNAL_SERIES) - used
    assert not unused, f"EXTERNAL_SERIES lists {sorted(unused)}, which no rule uses: drop them"
    assert not set(EXTERNAL_SERIES) & set(exported_labels()), "an external series is exported by ocrstream"


def test_a_misspelt_series_is_reported():
    """The check above can fail: a typo in one metric name (or a counter without `_total`) is caught."""
    broken = copy.deepcopy(alerts_doc())
    target = next(r for r in rules(broken) if "ocrstream_loop_stalled" in r["expr"])
    target["expr"] = target["expr"].replace("ocrstream_loop_stalled", "ocrstream_loop_staled")
    counter = next(r for r in rules(broken) if "ocrstream_poison_pages_total" in r["expr"])
    counter["expr"] = counter["expr"].replace("ocrstream_poison_pages_total", "ocrstream_poison_pages")
    assert unknown_series(rules(broken)) == {target["alert"]: {"ocrstream_loop_staled"},
                                              counter["alert"]: {"ocrstream_poison_pages"}}


def test_reason_matchers_use_known_reason_codes():
    known = {c.value for c in ReasonCode}
    for r in rules():
        unknown = reason_values(r["expr"]) - known
        assert not unknown, f"{r['alert']}: reason codes {sorted(unknown)} do not exist (ocrstream/errors.py)"


def test_templated_labels_survive_the_expression():
    for r in rules():
        wanted = template_labels(r)
        kept = result_labels(r["expr"])
        if kept is None:  # not aggregated: the labels of the series themselves (any of them)
            kept = set().union(*(series_labels(n) for n in promql_metrics(r["expr"])))
        missing = wanted - kept
        assert not missing, f"{r['alert']}: annotations use $labels.{sorted(missing)}, which {r['expr']!r} drops"


# --------------------------------------------------------------------------- coverage


def test_alerts_cover_the_failure_modes():
    used = set().union(*(promql_metrics(r["expr"]) for r in rules()))
    subjects = {
        "a stage restarting in a loop": {"process_start_time_seconds"},
        # (not ocrstream_loop_last_progress_timestamp_seconds: an idle stage does not advance it)
        "a stage loop that stopped advancing": {"ocrstream_loop_stalled"},
        "incomplete documents": {"ocrstream_documents_incomplete_total"},
        "dead letters": {"ocrstream_dead_letters_total"},
        "poison pages and page retries": {"ocrstream_poison_pages_total", "ocrstream_page_retries_total"},
    }
    for subject, series in subjects.items():
        assert series <= used, f"no alert on {subject}: {sorted(series - used)} unused"
    dead_letter_rules = [r for r in rules() if "ocrstream_dead_letters_total" in promql_metrics(r["expr"])]
    internal = [r for r in dead_letter_rules if re.search(r'reason\s*=\s*"internal_error"', r["expr"])]
    assert internal and all(r["labels"]["severity"] in ("warning", "critical") for r in internal), \
        "internal_error dead letters (bugs) need a warning or critical alert"
    assert any(r["labels"]["severity"] == "critical" for r in internal)
    bad_input = [r for r in dead_letter_rules if re.search(r'reason\s*!~\s*"[^"]*\binternal_error\b', r["expr"])]
    assert bad_input and all(r["labels"]["severity"] == "info" for r in bad_input), \
        "dead letters for input reasons (internal_error excluded) should be an info-level alert"


# --------------------------------------------------------------------------- wiring


def test_prometheus_loads_the_rules_and_compose_mounts_them():
    prom = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    rule_files = prom.get("rule_files") or []
    assert "alerts.yml" in rule_files, f"prometheus.yml rule_files: {rule_files}"
    svc = yaml.safe_load(COMPOSE.read_text())["services"]["prometheus"]
    config = next(a.split("=", 1)[1] for a in svc["command"] if a.startswith("--config.file="))
    mounts = {}
    for volume in svc["volumes"]:
        parts = str(volume).split(":")
        if parts[0].startswith("./"):
            mounts[parts[1]] = parts[0]
    assert mounts.get(config) == "./deploy/prometheus/prometheus.yml"
    for rule_file in rule_files:
        in_container = str(Path(config).parent / rule_file)  # rule_files are relative to the config file
        source = mounts.get(in_container)
        assert source, f"rule file {in_container} is not mounted into the prometheus service"
        assert (ROOT / source).resolve() == (PROMETHEUS / rule_file).resolve(), f"{in_container} <- {source}"
        assert (ROOT / source).is_file(), source


def test_promtool_check_rules():
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not installed (ships with Prometheus)")
    proc = subprocess.run([exe, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([exe, "check", "config", str(PROMETHEUS / "prometheus.yml")],  # loads the rule files too
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
