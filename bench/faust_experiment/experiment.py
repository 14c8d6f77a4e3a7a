#!/usr/bin/env python
"""Restart experiment: does faust-streaming 0.15.3 process records twice or lose them after a restart?

Checks the claim in the repository README ("Why the assembler is not a faust app") and the
docstring of consumers/assembler.py. Run with the project's interpreter (it has confluent-kafka
and devtools.stack):

    /work/main/.venv/bin/python bench/faust_experiment/experiment.py

What it does:

1. Creates bench/faust_experiment/.venv (if missing) and installs requirements.txt there
   (faust-streaming 0.15.3, aiokafka 0.14.0, ...). faust is not a project dependency.
2. Starts a separate single-node Kafka broker with devtools.stack.KafkaService on ports
   39092/39093 (data under /tmp/faust-exp-stack), so the test suites' brokers are untouched.
3. Creates a topic with 12 partitions. For each of 18 rounds: while the app is DOWN it produces
   a batch of records with unique ids (key = id, explicit partition; 11 rounds write the first
   records ever to a partition, i.e. one without a committed offset), starts faust_app.py as a
   subprocess; 2 s after the worker logs "Ready" it produces one more ("live") record to every
   partition holding data, so that a partition whose backlog the run skipped gets a later record
   whose commit moves past the skipped ones. It then waits until the app's consumer group has
   committed up to the end of every partition (or a timeout, 60 s from the start) and stops the
   app with SIGTERM or SIGKILL (the schedule is in STOP). Some rounds SIGKILL the app as soon as
   the records are processed, before faust commits: replays in the next round are then expected
   (at-least-once) and counted separately.
4. After each round compares the app's processing log (one line per processed record, written
   before the event is acked) with what was produced and with the group's committed offsets
   (confluent-kafka Consumer.committed) and prints a per-round table and a summary; writes
   output.txt, result.json and, for rounds that skipped or lost records, the worker's log
   (faust-logs/) next to this script. Stops the broker at the end.

Counting, per round (one run of the app):
- dup_in_run: ids processed more than once by that same process.
- replay_committed: ids processed in an earlier run whose offset was below the committed
  offset when this run started, processed again (should never happen).
- replay_uncommitted: ids processed in an earlier run but not committed before that run was
  killed, processed again (expected with at-least-once).
- skipped: ids waiting for this run (its backlog and live records, leftovers of earlier runs)
  that it did not process.
- lost_new: ids never processed at all whose offset is below the group's committed offset
  after this run (faust will never read them again): silently lost.
- pending: never processed, not yet committed past (would be read by a later run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VENV = HERE / ".venv"
VENV_PY = VENV / "bin" / "python"
APP = HERE / "faust_app.py"

# Separate broker for the experiment (the test suites use 29092/29192).
STACK_ENV = {
    "OCRSTREAM_KAFKA_PORT": "39092",
    "OCRSTREAM_KAFKA_CONTROLLER_PORT": "39093",
    "OCRSTREAM_S3_PORT": "38333",
    "OCRSTREAM_STACK_PORT_BASE": "47000",
    "OCRSTREAM_STACK_DIR": "/tmp/faust-exp-stack",
}

PARTITIONS = 12
# Partitions that get their first record ever in a round (produced while the app is down, so the
# next start finds records in a partition the group has no committed offset for).
NEW_PARTITIONS = {1: [0, 1], 2: [2], 3: [3], 4: [4], 5: [5], 6: [6], 8: [7], 10: [8], 12: [9],
                  14: [10], 16: [11]}
# How each round's run is stopped: term = SIGTERM after the group committed everything,
# kill = SIGKILL after the group committed everything, kill-early = SIGKILL as soon as every
# record was processed (before faust's commit, so the next run replays: expected).
STOP = {4: "kill", 9: "kill", 14: "kill", 7: "kill-early", 12: "kill-early", 17: "kill-early"}
ROUND_TIMEOUT_S = 60.0
LIVE_DELAY_S = 2.0  # after the worker logs "Ready", produce one live record per partition holding data
STOP_TIMEOUT_S = 30.0


def round_plan(r: int, active: list[int]) -> dict:
    """Which partitions get how many records in round r (deterministic)."""
    new = NEW_PARTITIONS.get(r, [])
    old = [p for p in active if p not in new]
    # Odd rounds write to every active partition, even rounds to every other one.
    old = old if r % 2 else old[(r // 2) % 2::2]
    per = 5 + 5 * (r % 4)  # 5, 10, 15, 20 records per partition
    return {"new": new, "partitions": sorted(new + old), "per_partition": per, "stop": STOP.get(r, "term")}


class Tee:
    def __init__(self, path: Path):
        self.f = open(path, "w")

    def __call__(self, *args):
        line = " ".join(str(a) for a in args)
        print(line, flush=True)
        self.f.write(line + "\n")
        self.f.flush()


def ensure_venv(log) -> dict:
    req = HERE / "requirements.txt"
    probe = ("import importlib.metadata as m, json; "
             "print(json.dumps({n: m.version(n) for n in ('faust-streaming', 'aiokafka', 'mode-streaming')}))")
    if VENV_PY.exists():
        out = subprocess.run([str(VENV_PY), "-c", probe], capture_output=True, text=True)
        if out.returncode == 0 and json.loads(out.stdout).get("faust-streaming") == "0.15.3":
            return json.loads(out.stdout)
    log(f"creating {VENV} and installing {req.name} ...")
    py = os.environ.get("PYTHON", "python3")
    subprocess.run([py, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "-r", str(req)], check=True)
    out = subprocess.run([str(VENV_PY), "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=18)
    ap.add_argument("--out", type=Path, default=HERE, help="where output.txt and result.json go")
    ap.add_argument("--work", type=Path, default=None, help="faust logs etc. (default /tmp/faust-exp-<run id>)")
    ap.add_argument("--keep-broker", action="store_true", help="leave the experiment's broker running")
    args = ap.parse_args()

    for k, v in STACK_ENV.items():
        os.environ[k] = v
    sys.path.insert(0, str(REPO))
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    from devtools.stack import KafkaService, StackError
    from ocrstream.settings import Settings

    args.out.mkdir(parents=True, exist_ok=True)
    log = Tee(args.out / "output.txt")
    started = dt.datetime.now(dt.timezone.utc)
    run_id = started.strftime("%Y%m%d%H%M%S")
    work = args.work or Path(f"/tmp/faust-exp-{run_id}")
    work.mkdir(parents=True, exist_ok=True)
    processed_log = work / "processed.jsonl"
    processed_log.touch()

    versions = ensure_venv(log)
    kafka = KafkaService(Settings())
    for attempt in range(3):
        # 39092/39093 lie in Linux's ephemeral port range: a client socket of another process can
        # hold one for a moment, and the broker then fails to bind. Try again a little later.
        try:
            kafka.up()
            break
        except StackError as e:
            if attempt == 2:
                raise
            log(f"broker did not start ({str(e).splitlines()[0][:120]}); retrying in 10 s")
            time.sleep(10)
    broker = kafka.address
    kafka_jar = sorted(p.name for p in kafka.libs.glob("kafka_2.13-*.jar"))
    versions.update({"python": platform.python_version(), "confluent-kafka (driver)": importlib.metadata.version("confluent-kafka"),
                     "kafka broker": kafka_jar[0].removeprefix("kafka_2.13-").removesuffix(".jar") if kafka_jar else "?"})

    app_id = f"faustexp-{run_id}"
    topic = f"faustexp-{run_id}-in"
    admin = AdminClient({"bootstrap.servers": broker})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(timeout=30)

    log(f"faust restart experiment {started.isoformat(timespec='seconds')}  run id {run_id}")
    log("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    log(f"broker {broker}; topic {topic} ({PARTITIONS} partitions); app/group {app_id}; work dir {work}")
    log()

    producer = Producer({"bootstrap.servers": broker, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
    checker = Consumer({"bootstrap.servers": broker, "group.id": app_id, "enable.auto.commit": False})
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]

    def committed() -> dict[int, int | None]:
        for attempt in range(30):  # the group coordinator may still be loading / moving
            try:
                res = checker.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
                return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in res}
            except KafkaException:
                if attempt == 29:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")

    def end_offsets() -> dict[int, int]:
        return {tp.partition: checker.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}

    produced: dict[str, dict] = {}  # id -> {p, o, round}
    events: list[dict] = []  # processing log lines, in order
    read_pos = 0

    def read_events() -> list[dict]:
        nonlocal read_pos
        with open(processed_log, "rb") as f:
            f.seek(read_pos)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        read_pos += len(complete)
        new = [json.loads(line) for line in complete.splitlines() if line.strip()]
        events.extend(new)
        return new

    def stop_app(proc: subprocess.Popen, how: str) -> tuple[str, float]:
        t0 = time.monotonic()
        if proc.poll() is not None:
            return f"exited by itself rc={proc.returncode}", 0.0
        if how == "term":
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
                return f"SIGTERM rc={proc.returncode}", time.monotonic() - t0
            except subprocess.TimeoutExpired:
                how = "kill-after-term"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return ("SIGTERM timed out, SIGKILL" if how == "kill-after-term" else "SIGKILL"), time.monotonic() - t0

    def produce(r: int, what: list[tuple[int, str]], phase: str) -> list[str]:
        delivered = []

        def on_delivery(err, msg):
            if err is not None:
                raise RuntimeError(f"delivery failed: {err}")
            delivered.append((msg.key().decode(), msg.partition(), msg.offset()))

        for p, suffix in what:
            rid = f"r{r:02d}-p{p:02d}-{suffix}"
            producer.produce(topic, key=rid, value=json.dumps({"id": rid}).encode(), partition=p,
                             on_delivery=on_delivery)
        producer.flush(30)
        assert len(delivered) == len(what), "not all records delivered"
        for rid, p, o in delivered:
            produced[rid] = {"p": p, "o": o, "round": r, "phase": phase}
        return [rid for rid, _, _ in delivered]

    rounds: list[dict] = []
    lost_ids: dict[str, dict] = {}
    active: list[int] = []
    hdr = (f"{'rnd':>3} {'stop':<10} {'prod':>4} {'live':>4} {'new p':<6} {'nocommit p':<10} {'proc':>4} "
           f"{'dup_run':>7} {'rep_comm':>8} {'rep_unc':>7} {'skip':>4} {'lost':>4} {'pend':>4} {'secs':>5}  end")
    log(hdr)
    log("-" * len(hdr))

    for r in range(1, args.rounds + 1):
        plan = round_plan(r, active)
        active = sorted(set(active) | set(plan["new"]))

        # 1. produce while the app is down
        batch = produce(r, [(p, f"{i:03d}") for p in plan["partitions"] for i in range(plan["per_partition"])],
                        "backlog")

        c_before = committed()
        ends = end_offsets()
        nocommit = [p for p in range(PARTITIONS) if ends[p] > 0 and c_before[p] is None]
        seen_before = {e["id"] for e in events}
        outstanding = {rid for rid in produced if rid not in seen_before and rid not in lost_ids}
        n_events_before = len(events)

        # 2. start the app and wait
        flog = work / f"round-{r:02d}.log"
        env = {**os.environ, "EXP_BROKER": broker, "EXP_APP_ID": app_id, "EXP_TOPIC": topic,
               "EXP_PARTITIONS": str(PARTITIONS), "EXP_PROCESSED_LOG": str(processed_log), "EXP_ROUND": str(r)}
        t0 = time.monotonic()
        t0_wall = time.time()
        with open(flog, "wb") as lf:
            proc = subprocess.Popen([str(VENV_PY), str(APP), "worker", "-l", "info"], cwd=work, env=env,
                                    stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        reason = "timeout"
        caught_up_at = None
        t_ready = None
        live: list[str] = []
        t_all_seen = None
        commit_trace = []  # (seconds since start, committed offsets) whenever they change
        while time.monotonic() - t0 < ROUND_TIMEOUT_S:
            time.sleep(0.3)
            read_events()
            if proc.poll() is not None:
                reason = f"app exited rc={proc.returncode}"
                break
            if not live:
                # 2b. once the worker says it is ready, one more record to every partition holding data,
                # so that a partition whose backlog was skipped gets a later record to process and commit
                if t_ready is None and b"[^Worker]: Ready" in flog.read_bytes():
                    t_ready = time.monotonic()
                if t_ready is not None and time.monotonic() - t_ready >= LIVE_DELAY_S:
                    live = produce(r, [(p, "live") for p in active], "live")
                    outstanding |= set(live)
                    ends = end_offsets()
                continue
            seen_now = {e["id"] for e in events[n_events_before:]}
            all_seen = outstanding <= seen_now
            if all_seen and t_all_seen is None:
                t_all_seen = time.monotonic() - t0
            if plan["stop"] == "kill-early" and all_seen:
                reason = "all processed"
                break
            c_now = committed()
            if not commit_trace or commit_trace[-1][1] != c_now:
                commit_trace.append((round(time.monotonic() - t0, 1), c_now))
            caught_up = all(c_now[p] is not None and c_now[p] >= ends[p] for p in range(PARTITIONS) if ends[p] > 0)
            if caught_up and all_seen:
                reason = "all processed+committed"
                break
            if caught_up:  # committed past everything but some records never showed up
                caught_up_at = caught_up_at or time.monotonic()
                if time.monotonic() - caught_up_at > 2.0:
                    reason = "committed, records missing"
                    break
        stop_desc, stop_s = stop_app(proc, "term" if plan["stop"] == "term" else "kill")
        elapsed = time.monotonic() - t0
        time.sleep(0.2)
        read_events()
        c_after = committed()

        # 3. analyse this run
        run_events = events[n_events_before:]
        per_id_run: dict[str, list[dict]] = defaultdict(list)
        for e in run_events:
            per_id_run[e["id"]].append(e)
        skipped = sorted(rid for rid in outstanding if rid not in per_id_run)
        dup_in_run = sorted(rid for rid, es in per_id_run.items() if len(es) > 1)
        rep_comm, rep_unc = [], []
        for rid in per_id_run:
            if rid in seen_before:
                p, o = produced[rid]["p"], produced[rid]["o"]
                (rep_comm if c_before[p] is not None and o < c_before[p] else rep_unc).append(rid)
        ever_seen = {e["id"] for e in events}
        lost_new, pending = [], []
        for rid, info in produced.items():
            if rid in ever_seen or rid in lost_ids:
                continue
            cp = c_after[info["p"]]
            if cp is not None and info["o"] < cp:
                lost_ids[rid] = {**info, "detected_round": r, "committed_before_run": c_before[info["p"]],
                                 "committed_after_run": cp}
                lost_new.append(rid)
            else:
                pending.append(rid)
        text = flog.read_text(errors="replace")
        warn = [ln for ln in text.splitlines() if "[WARNING]" in ln]
        err = [ln for ln in text.splitlines() if "[ERROR]" in ln or "Traceback" in ln]
        row = {
            "round": r, "stop_mode": plan["stop"], "stopped_by": stop_desc, "stop_s": round(stop_s, 2),
            "wait_end": reason, "seconds": round(elapsed, 1),
            "produced": len(batch), "produced_live": len(live),
            "skipped_by_run": len(skipped), "skipped_examples": skipped[:5],
            "seconds_until_ready": None if t_ready is None else round(t_ready - t0, 1),
            "produced_partitions": plan["partitions"], "new_partitions": plan["new"],
            "partitions_with_records_but_no_committed_offset_at_start": nocommit,
            "outstanding_at_start": len(outstanding),
            "processed_events": len(run_events), "processed_distinct": len(per_id_run),
            "dup_in_run": len(dup_in_run),
            "dup_in_run_partitions": sorted({produced[rid]["p"] for rid in dup_in_run}),
            "dup_in_run_in_partitions_without_committed_offset": sum(
                1 for rid in dup_in_run if produced[rid]["p"] in nocommit),
            "replay_committed": len(rep_comm), "replay_uncommitted": len(rep_unc),
            "lost_new": len(lost_new), "pending_after": len(pending),
            "table_count_gt1": sum(1 for e in run_events if e["count"] > 1),
            "committed_before": c_before, "committed_after": c_after, "end_offsets": ends,
            "seconds_until_all_processed": None if t_all_seen is None else round(t_all_seen, 1),
            "commit_trace": commit_trace,
            "faust_log_warnings": len(warn), "faust_log_errors": len(err),
            "faust_log_error_lines": err[:5],
            "dup_in_run_detail": [
                {"id": rid, "p": es[0]["p"], "o": es[0]["o"], "counts": [e["count"] for e in es],
                 "at_s": [round(e["t"] - t0_wall, 2) for e in es]}
                for rid, es in ((rid, per_id_run[rid]) for rid in dup_in_run[:10])],
            "examples": {"dup_in_run": dup_in_run[:5], "replay_committed": rep_comm[:5], "lost_new": lost_new[:5]},
        }
        rounds.append(row)
        if skipped or lost_new:  # keep the worker's log of the rounds that matter
            (args.out / "faust-logs").mkdir(exist_ok=True)
            shutil.copy(flog, args.out / "faust-logs" / flog.name)
        log(f"{r:>3} {plan['stop']:<10} {len(batch):>4} {len(live):>4} {','.join(map(str, plan['new'])) or '-':<6} "
            f"{','.join(map(str, nocommit)) or '-':<10} {len(run_events):>4} {len(dup_in_run):>7} "
            f"{len(rep_comm):>8} {len(rep_unc):>7} {len(skipped):>4} {len(lost_new):>4} {len(pending):>4} "
            f"{elapsed:>5.1f}  {reason}; {stop_desc}")

    checker.close()
    finished = dt.datetime.now(dt.timezone.utc)

    # 4. summary
    def rounds_where(key):
        return [x["round"] for x in rounds if x[key] > 0]

    nocommit_rounds = [x["round"] for x in rounds if x["partitions_with_records_but_no_committed_offset_at_start"]]
    never = sorted(rid for rid in produced if rid not in {e["id"] for e in events})
    final_count: dict[str, int] = {}
    for e in events:
        final_count[e["id"]] = e["count"]
    summary = {
        "rounds": len(rounds),
        "records_produced": len(produced),
        "records_produced_live": sum(x["produced_live"] for x in rounds),
        "processing_events": len(events),
        "distinct_records_processed": len({e["id"] for e in events}),
        "rounds_with_dup_in_run": rounds_where("dup_in_run"),
        "dup_in_run_total": sum(x["dup_in_run"] for x in rounds),
        "dup_in_run_in_partitions_without_committed_offset": sum(
            x["dup_in_run_in_partitions_without_committed_offset"] for x in rounds),
        "rounds_with_replay_of_committed_records": rounds_where("replay_committed"),
        "rounds_with_replay_of_uncommitted_records (expected after kill-early)": rounds_where("replay_uncommitted"),
        "replay_uncommitted_total": sum(x["replay_uncommitted"] for x in rounds),
        "rounds_with_records_skipped_by_the_run": rounds_where("skipped_by_run"),
        "records_skipped_by_a_run_total": sum(x["skipped_by_run"] for x in rounds),
        "rounds_with_lost_records": rounds_where("lost_new"),
        "records_lost": len(lost_ids),
        "records_never_processed": len(never),
        "rounds_starting_with_uncommitted_partitions_holding_records": nocommit_rounds,
        "rounds_ending_on_timeout_or_crash": [x["round"] for x in rounds if x["wait_end"] in ("timeout",)
                                              or x["wait_end"].startswith("app exited")],
        "ids_whose_table_counter_ended_above_1": sum(1 for c in final_count.values() if c > 1),
        "rounds_with_faust_errors_logged": [x["round"] for x in rounds if x["faust_log_errors"]],
    }
    log()
    log("columns: prod = records produced while the app was down; live = records produced 2 s after the worker")
    log("logged Ready (one per partition holding data); new p = partitions receiving their first records;")
    log("nocommit p = partitions holding records but without a committed offset when the app started;")
    log("proc = records processed by this run (events); dup_run = ids processed twice by the same run;")
    log("rep_comm = already-committed ids processed again; rep_unc = ids processed again that the previous")
    log("(killed) run had not committed (expected); skip = records waiting for this run (backlog, live, earlier")
    log("leftovers) that it did not process; lost = never processed although the committed offset moved past")
    log("them (new this round); pend = never processed so far, not committed past (a later run may read them).")
    log()
    log("summary:")
    for k, v in summary.items():
        log(f"  {k}: {v}")
    if lost_ids:
        log("lost records:")
        for rid, info in sorted(lost_ids.items()):
            log(f"  {rid}: {info}")
    log(f"finished {finished.isoformat(timespec='seconds')} ({(finished - started).total_seconds():.0f} s)")

    result = {"started": started.isoformat(timespec="seconds"), "finished": finished.isoformat(timespec="seconds"),
              "run_id": run_id, "versions": versions, "broker": broker, "topic": topic, "app_id": app_id,
              "partitions": PARTITIONS, "round_timeout_s": ROUND_TIMEOUT_S, "host": {"cpus": os.cpu_count()},
              "summary": summary, "lost": lost_ids, "rounds": rounds}
    (args.out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    del producer, admin, checker  # close the clients before the broker goes away (no reconnect noise)
    if not args.keep_broker:
        kafka.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
