"""The capacity model's arithmetic (bench/capacity.py) on fixed inputs; its inputs are measured by
``python bench/capacity.py measure``, not here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import capacity  # noqa: E402

# Inputs in the shape `measure` writes; values chosen so the results can be worked out by hand.
INPUTS = {
    "measured_at": "test",
    "engine": {"by_dpi": {
        "150": {"s_per_page": 2.0, "render_ms": 100.0, "page_task_bytes": 400, "page_result_bytes": 6000},
        "300": {"s_per_page": 4.0, "render_ms": 400.0, "page_task_bytes": 400, "page_result_bytes": 8000},
    }},
    "broker": {"all_partitions": {"mb_per_s": 30.0, "broker_cpu_s_per_mb": 0.1}, "one_partition": {"mb_per_s": 20.0},
               "latency": {"hop_ms_p50": 10.0}},
    "framework": {"cpu_s_per_page": {"splitter": 0.01, "assembler": 0.02, "brokers": 0.05}},
    "point": {"workers": 2, "dpi": 150, "pages": 12, "batch_max_pages": 8, "document_result_bytes_per_page": 6000},
}


def test_erlang_c_matches_known_values():
    assert capacity.erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = utilisation
    assert capacity.erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert capacity.erlang_c(3, 3.0) == 1.0  # saturated


def test_cpu_plan_workers_partitions_brokers():
    p = capacity.plan(INPUTS, 7.0, 150, utilization=0.7)
    # 2 s a page: 0.5 pages/s per worker, 7 / (0.7 x 0.5) = 20 workers; pages partitions 2 x 20 -> 48
    assert p["compute"]["workers"] == 20 and p["compute"]["device"] == "cpu"
    assert p["partitions"]["pages"] == 48 == p["settings"]["OCRSTREAM_PAGES_PARTITIONS"]
    # assemblers: 7 x 0.02 / 0.7 = 0.2 -> 1; results partitions stay at the topology's 6
    assert p["stages"]["assemblers"] == 1 and p["partitions"]["page-results"] == 6
    assert p["brokers"]["count"] == 3  # tiny load: the minimum
    assert p["brokers"]["bytes_per_page"] == 400 + 2 * 6000 + 6000
    assert 0 < p["queueing"]["worker_utilization"] <= 0.7


def test_dpi_between_measured_points_is_interpolated():
    p = capacity.plan(INPUTS, 1.0, 225)
    assert p["compute"]["s_per_page"] == pytest.approx(3.0)
    outside = capacity.plan(INPUTS, 1.0, 600)
    assert outside["compute"]["s_per_page"] == pytest.approx(4.0)
    assert any("outside the measured range" in n for n in outside["notes"])


def test_gpu_plan_is_marked_as_assumed():
    p = capacity.plan(INPUTS, 100.0, 150, gpu_pages_per_s=20.0, utilization=0.7)
    assert p["compute"]["gpus"] == 8 and p["compute"]["gpu_pages_per_s_measured"] is False
    assert p["compute"]["render_cores"] == 15  # 100 pages/s x 0.1 s render / 0.7
    assert any("assumption" in n for n in p["notes"])


def test_big_load_needs_more_result_partitions_and_brokers():
    p = capacity.plan(INPUTS, 2000.0, 150, gpu_pages_per_s=50.0, utilization=0.7)
    # 2000 x 0.02 / 0.7 = 57.1 -> 58 assemblers -> 60 result partitions, set before the first document
    assert p["stages"]["assemblers"] == 58
    assert p["partitions"]["page-results"] == 60 and any("cannot be raised later" in n for n in p["notes"])
    # 2000 pages/s x 18.4 kB = 36.8 MB/s, x 3 copies = 110.4 MB/s; each broker writes what the
    # measured 3-broker cluster did (30 MB/s of client bytes = 30 MB/s per broker) x 0.7 -> 6
    assert p["brokers"]["by_bytes"] == 6 and p["brokers"]["count"] == 6
    # CPU: 36.8 MB/s x 0.1 s/MB = 3.7 cores, 4 cores a broker at 0.7 -> 2
    assert p["brokers"]["by_cpu"] == 2


def test_point_prediction_batches_a_burst():
    engine_bound = {**INPUTS, "cpus": 4}
    pred = capacity.predict_point(engine_bound)
    # 12 pages, 2 workers: 6 each in one batch of 6 x 2 s = 12 s (+ 4 hops x 10 ms)
    assert pred["page_latency_ms"]["max"] == 12040 and pred["pages_per_s"] == pytest.approx(1.0)


def test_point_prediction_on_shared_cores():
    # one core for both workers, the brokers idle at 0.5 of it: the cores bound the rate
    shared = {**INPUTS, "cpus": 1, "broker": {**INPUTS["broker"], "idle_cpu_cores": 0.5}}
    pred = capacity.predict_point(shared)
    per_page = 2.0 + 0.01 + 0.02 + (400 + 3 * 6000) / 1e6 * 0.1  # engine + splitter + assembler + brokers
    assert pred["cpu_s_per_page"] == pytest.approx(per_page, abs=1e-3)
    assert pred["pages_per_s"] == pytest.approx(0.5 / per_page, abs=1e-3)
    assert pred["engine_only_pages_per_s"] == pytest.approx(1.0)
