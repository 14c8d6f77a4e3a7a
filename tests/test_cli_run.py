"""`ocrstream run`: how worker processes are spread over GPUs and CPU cores (no services needed)."""

from __future__ import annotations

from ocrstream.cli import build_parser, worker_env
from ocrstream.settings import Settings


def test_workers_per_gpu_spreads_engine_processes_over_the_gpus():
    s = Settings(engine_device="cpu")
    devices = [worker_env(s, n, 6, [0, 1], cpu_count=16)["OCRSTREAM_ENGINE_DEVICE"] for n in range(6)]
    assert sorted(devices) == ["cuda:0"] * 3 + ["cuda:1"] * 3
    paddle = Settings(engine="paddle")
    assert worker_env(paddle, 1, 2, [3], cpu_count=16) == {"OCRSTREAM_ENGINE_DEVICE": "gpu:3"}


def test_cpu_workers_share_the_cores_unless_threads_are_set():
    assert worker_env(Settings(engine_device="cpu"), 0, 2, [], cpu_count=8) == {"OCRSTREAM_ENGINE_THREADS": "4"}
    assert worker_env(Settings(engine_device="cpu"), 0, 16, [], cpu_count=8) == {"OCRSTREAM_ENGINE_THREADS": "1"}
    assert worker_env(Settings(engine_device="cpu", engine_threads=3), 0, 2, [], cpu_count=8) == {}


def test_run_parses_gpu_options():
    args = build_parser().parse_args(["run", "--gpus", "0,1", "--workers-per-gpu", "3"])
    assert (args.gpus, args.workers_per_gpu) == ("0,1", 3)


def test_run_without_flags_starts_a_worker_per_core_as_memory_allows():
    from ocrstream.cli import WORKER_MEMORY_BYTES, default_workers

    assert build_parser().parse_args(["run"]).workers is None
    assert default_workers(2) == 2 and default_workers(16) == 16 and default_workers(0) == 1
    assert default_workers(16, available_bytes=3 * WORKER_MEMORY_BYTES + 1) == 3
    assert default_workers(4, available_bytes=WORKER_MEMORY_BYTES // 2) == 1  # never none
    # ... and each of them then gets one inference thread: cores / workers
    assert worker_env(Settings(engine_device="cpu"), 0, default_workers(8), [], cpu_count=8) == \
        {"OCRSTREAM_ENGINE_THREADS": "1"}
