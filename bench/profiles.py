"""Shadow traffic between two model profiles, measured (not a test): ``ocrstream compare``'s report
on real OCR.

    python bench/profiles.py [--pages 10] [--dpi 100] [--share 1.0] [--split 0]

Runs splitter, assembler and one OCR worker per profile as separate processes, exactly as
deployed, on a local stack of its own (``.ocrstream-bench-profiles``; Kafka on 39192 + offset, S3
on 39533 + offset, ``OCRSTREAM_BENCH_PORT_OFFSET``), with

- ``default``: the engine settings (PP-OCRv6 small, 150 DPI);
- ``lowdpi``: the same models at ``--dpi`` (render and detection input smaller: faster, less
  detail),

routes the default tenant's documents ``--split`` (share of the A/B split) to ``lowdpi`` and
shadows ``--share`` of the others on it, publishes whole documents of ``../shared/data/scans-dev``
(scanned court filings; the generated samples when absent) until ``--pages`` pages, waits for every
result and shadow result, then runs ``ocrstream compare --json`` (the real command) and prints its
report (the same JSON, also as ``compare``'s tables). Output: JSON on stdout,
``bench/out/profiles.json``. The metrics part of the report covers the workers' samples published
since the timed documents were (a sample just after the warm-up may still count warm-up pages); the
host's load average is in the output: the figures are only comparable at the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devtools.stack import Stack  # noqa: E402
from ocrstream.kafka import make_admin  # noqa: E402
from ocrstream.settings import Settings  # noqa: E402
from topology import apply_topics, topic_specs  # noqa: E402

OUT = REPO / "bench" / "out"
OFFSET = int(os.environ.get("OCRSTREAM_BENCH_PORT_OFFSET", "0"))


def bench_settings(args) -> Settings:
    tag = uuid.uuid4().hex[:6]
    return Settings(
        kafka_bootstrap_servers=f"127.0.0.1:{39192 + OFFSET}", kafka_port=39192 + OFFSET,
        kafka_controller_port=39193 + OFFSET, s3_endpoint=f"127.0.0.1:{39533 + OFFSET}", s3_port=39533 + OFFSET,
        stack_port_base=43000 + OFFSET, stack_dir=REPO / ".ocrstream-bench-profiles",
        kafka_libs=REPO / "deploy" / "kafka" / "libs", s3_access_key="ocrstream", s3_secret_key="ocrstream-secret",
        topic_prefix=f"p{tag}.", group_prefix=f"p{tag}.", bucket=f"profiles-{tag}", text_layer="off",
        metrics_interval_s=5.0,
        profiles={"lowdpi": {"render_dpi": args.dpi, "description": f"PP-OCRv6 small at {args.dpi} DPI"}},
        profile_routes={"-": {"allowed": ["default", "lowdpi"], "shadow": "lowdpi", "shadow_share": args.share,
                              "split": {"default": 1 - args.split, "lowdpi": args.split} if args.split else
                              {"default": 1}}})


def env_of(s: Settings, **extra: str) -> dict[str, str]:
    """Environment of a stage process equal to ``s`` (the caller's ``OCRSTREAM_*`` replaced)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCRSTREAM_")}
    for name, value in s.model_dump().items():
        if value is None:
            continue
        value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        env[f"OCRSTREAM_{name.upper()}"] = json.dumps(value) if isinstance(value, dict) else str(value)
    env.update(extra)
    return env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pages", type=int, default=10)
    p.add_argument("--dpi", type=int, default=100, help="render DPI of the lowdpi profile")
    p.add_argument("--share", type=float, default=1.0, help="shadow share of the default-profile documents")
    p.add_argument("--split", type=float, default=0.0, help="A/B share of lowdpi")
    p.add_argument("--timeout", type=float, default=3600)
    args = p.parse_args()

    from bench.throughput import pick_documents
    from ocrstream.documents import content_type_for
    from ocrstream.storage import ObjectStore
    from producers.publish import DocumentPublisher
    from producers.results import ResultFollower
    from topology import document_key

    s = bench_settings(args)
    Stack(s).up()
    apply_topics(make_admin(s), topic_specs(profiles=tuple(s.profiles)), s.topic_prefix)
    ObjectStore(s).ensure_bucket()
    log_dir = OUT / "profiles-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for stage, profile in (("splitter", "default"), ("assembler", "default"), ("worker", "default"),
                           ("worker", "lowdpi")):
        log = open(log_dir / f"{stage}-{profile}.log", "wb")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "ocrstream.cli", stage], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env=env_of(s, OCRSTREAM_PROFILE=profile, OCRSTREAM_WORKER_ID=f"{stage}-{profile}",
                       OCRSTREAM_ENGINE_THREADS="1")))
    try:
        from consumers.routing import choose_profile
        from ocrstream.compare import collect
        from schemas import DocumentRef, ObjectRef

        with tempfile.TemporaryDirectory() as tmp:
            docs = pick_documents(args.pages, Path(tmp))
            # warm-up (not measured: model load, group joins): one document through each profile
            follower = ResultFollower(s)
            with DocumentPublisher(s) as pub:
                warm = [pub.upload_and_publish(docs[0], profile=profile) for profile in ("default", "lowdpi")]
            follower.wait_for(warm, timeout_s=600)
            follower.close()
            follower = ResultFollower(s)
            since = int(time.time() * 1000)
            with DocumentPublisher(s) as pub:
                ids = []
                for d in docs:
                    key = f"{s.upload_prefix}bench/{uuid.uuid4().hex}/{d.name}"
                    pub.store.put_bytes(key, d.read_bytes(), content_type_for(d.name))
                    ids.append(pub.publish_object(s.bucket, key, filename=d.name))
            t0 = time.perf_counter()
            results = follower.wait_for(ids, timeout_s=args.timeout)
            follower.close()
        ref = lambda i: DocumentRef(document_id=i, submitted_at=0,  # noqa: E731
                                    source=ObjectRef(bucket=s.bucket, key="k", filename="k"))
        shadowed = {i for i in ids if choose_profile(s, None, ref(i), document_key(None, i)).shadow}
        deadline = time.monotonic() + args.timeout
        while len(set(collect(s, since, timeout_s=60).shadows) & shadowed) < len(shadowed):
            if time.monotonic() > deadline:
                raise SystemExit(f"shadow results missing after {args.timeout}s")
            time.sleep(2)
        elapsed = time.perf_counter() - t0
        time.sleep(2 * s.metrics_interval_s)  # the workers' last metrics samples
        hours = (time.time() * 1000 - since) / 3600_000
        proc = subprocess.run([sys.executable, "-m", "ocrstream.cli", "compare", "--json",
                               "--since-hours", f"{hours:.6f}"], cwd=REPO, env=env_of(s), capture_output=True,
                              text=True, timeout=600, check=True)
        from ocrstream.compare import format_report

        report = orjson.loads(proc.stdout)
        load = os.getloadavg()
        summary = {"documents": len(ids), "pages": sum(r.page_count for r in results.values()),
                   "shadowed": len(shadowed), "seconds_to_all_results": round(elapsed, 1),
                   "lowdpi_dpi": args.dpi, "shadow_share": args.share, "split": args.split,
                   "load_average_1_5_15": [round(x, 1) for x in load],
                   "compare": report, "compare_table": format_report(report)}
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "profiles.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        print(summary["compare_table"])
        print(orjson.dumps({k: v for k, v in summary.items() if k != "compare_table"}).decode())
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if not os.environ.get("OCRSTREAM_BENCH_KEEP_STACK"):
            Stack(s).down()


if __name__ == "__main__":
    main()
