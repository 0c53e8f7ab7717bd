"""The benchmark machinery computes what it says; no timing is asserted (numbers live in `cxr bench`)."""
from __future__ import annotations

import base64
import json
import struct

import pytest

from benchmarks.load import ClosedLoop, requests_for, run_load
from benchmarks.run import summarise
from benchmarks.triton_stats import breakdown


def test_load_generator_counts_every_request_and_error():
    sent = []

    def send(blob: bytes):
        sent.append(blob)
        return "rejected" if blob == b"bad" else None

    row = run_load(send, [b"a", b"bad", b"c"], concurrency=3, requests=30, warmup=0)
    assert len(sent) == 30
    assert row["errors"] == 10 and row["first_error"] == "rejected"
    assert row["p50_ms"] <= row["p90_ms"] <= row["p95_ms"] <= row["p99_ms"]
    assert row["img_s"] == pytest.approx(20 / row["wall_s"])


def test_an_open_ended_loop_runs_until_stopped_and_cycles_the_images():
    import time

    answers = []
    with ClosedLoop(lambda blob: blob, [b"a", b"b"], workers=2,
                    on_answer=lambda sent, answered, result: answers.append((sent, answered, result))):
        time.sleep(0.05)
    count = len(answers)
    time.sleep(0.02)
    assert count > 10 and len(answers) == count  # nothing is sent after the block
    assert {r for _, _, r in answers} == {b"a", b"b"} and all(s <= a for s, a, _ in answers)


def test_requests_scale_with_concurrency():
    assert requests_for(1) == 400 and requests_for(64) == 400 and requests_for(256) == 1024


def _row(c, img_s, p50, p99):
    return {"concurrency": c, "img_s": img_s, "p50_ms": p50, "p99_ms": p99, "errors": 0}


def test_summary_ratios_and_goals():
    served = [_row(1, 10, 100, 120), _row(4, 18, 200, 260), _row(16, 20, 700, 900), _row(64, 19, 3000, 4000)]
    baseline = [_row(1, 6, 160, 200), _row(16, 6.5, 2400, 2600)]
    today = [_row(1, 5, 200, 240), _row(16, 5.5, 2900, 3100)]  # the baseline with the heavier segmenter
    s = summarise({"raw_img_s": 21.0}, served, baseline, today, 5.0)
    assert s["served_img_s"] == 20 and s["served_concurrency"] == 16
    assert s["efficiency"] == pytest.approx(20 / 21)
    assert s["vs_baseline"] == pytest.approx(20 / 6.5)
    assert s["batching_gain"] == pytest.approx(2.0)
    assert s["p99_over_p50_c1"] == pytest.approx(1.2)
    assert s["p99_ms_at_baseline_concurrency"] == {"concurrency": 16, "served": 900, "baseline": 2600}
    assert s["vs_today_baseline"] == pytest.approx(20 / 5.5) and s["today_baseline_img_s"] == 5.5
    assert s["p99_ms_c1"] == {"served": 120, "baseline_today": 240}
    assert s["goals"] == {"efficiency >= 0.90": True, "vs_baseline >= 3": True, "vs_today_baseline >= 5": False,
                          "p99 <= 1.3 x p50 at concurrency 1": True}
    slow = summarise({"raw_img_s": 40.0}, served, baseline, today, 3.0)
    assert slow["goals"]["efficiency >= 0.90"] is False


def test_triton_statistics_breakdown_is_per_request_over_the_interval():
    idle = {"requests": 10, "executions": 5, "inferences": 10, "queue": 0, "compute_input": 0,
            "compute_infer": 0, "compute_output": 0, "success": 0}
    before = {"m": idle, "idle": idle}
    after = {"m": {"requests": 30, "executions": 10, "inferences": 30, "queue": 40_000_000, "compute_input": 2_000_000,
                   "compute_infer": 60_000_000, "compute_output": 2_000_000, "success": 90_000_000},
             "idle": idle}
    out = breakdown(before, after)
    assert set(out) == {"m"}  # a model without requests in the interval is left out
    assert out["m"]["requests"] == 20 and out["m"]["mean_batch"] == 4.0
    assert out["m"]["queue_ms"] == pytest.approx(2.0) and out["m"]["compute_ms"] == pytest.approx(3.2)
    assert out["m"]["request_ms"] == pytest.approx(4.5)  # the requests' own wall time, per request


def test_perf_analyzer_input_is_the_serialized_bytes_tensor(tmp_path, xray_jpeg):
    from tritonclient.utils import deserialize_bytes_tensor

    from benchmarks.perf_analyzer import write_input_data

    path = write_input_data([xray_jpeg, b"xyz"], tmp_path / "input.json")
    entries = json.loads(path.read_text())["data"]
    assert len(entries) == 2
    raw = base64.b64decode(entries[0]["image_bytes"]["b64"])
    assert struct.unpack("<I", raw[:4])[0] == len(xray_jpeg)
    assert deserialize_bytes_tensor(raw)[0] == xray_jpeg
    assert entries[0]["image_bytes"]["shape"] == [1]


@pytest.mark.slow
def test_raw_pipeline_reports_each_stage(repository, xray_jpeg):
    from benchmarks.raw import measure

    result = measure(str(repository), [xray_jpeg] * 4, batches=(2,), images=4)
    row = result["rows"][0]
    assert row["batch"] == 2 and result["best_batch"] == 2
    assert all(row[k] > 0 for k in ("preprocess_ms", "segmentation_ms", "classification_ms", "routing_ms"))
    stages = ("preprocess_ms", "segmentation_ms", "classification_ms", "routing_ms")
    assert result["raw_img_s"] == pytest.approx(1e3 / sum(row[k] for k in stages))
    assert row["gate_ms"] > 0 and row["gate_share"] == pytest.approx(row["gate_ms"] / sum(row[k] for k in stages))
    # The MACs PyTorch counts for the served graphs (MobileNetV2 U-Net at 256 px, ResNet-18 at 128 px).
    assert result["gmacs"]["lung_segmentation"] == pytest.approx(0.906, abs=0.01)
    assert result["gmacs"]["cxr_classifier"] == pytest.approx(0.566, abs=0.005)


@pytest.mark.slow
def test_flask_baseline_answers_like_the_pipeline_and_names_bad_input(repository, xray_jpeg):
    from benchmarks.baseline_server import create_app
    from cxr.labels import LABELS
    from cxr.pipeline import LocalPipeline

    client = create_app(threads=2).test_client()
    answer = client.post("/triage", data=xray_jpeg)
    assert answer.status_code == 200
    expected = LocalPipeline(repository).run_batch([xray_jpeg])[0]
    assert answer.get_json()["top_finding"] == expected.triage["top_finding"]
    assert answer.get_json()["models_run"] == expected.triage["models_run"]
    served = answer.get_json()["probabilities"]
    assert [served[label] for label in LABELS] == pytest.approx(expected.probabilities.tolist(), abs=1e-3)
    bad = client.post("/triage", data=b"not an image")
    assert bad.status_code == 400 and "bad image" in bad.get_json()["error"]


@pytest.mark.slow
def test_flask_baseline_of_todays_models_runs_the_earlier_segmenter_and_stage_2(xray_jpeg):
    from benchmarks.baseline_server import MODELS, create_app
    from cxr.triage import PRIORITIES

    answer = create_app(threads=2, models="today").test_client().post("/triage", data=xray_jpeg)
    assert answer.status_code == 200 and answer.get_json()["priority"] in PRIORITIES
    assert [s.name for s in MODELS["today"]] == ["lung_resunet18", "seme_densenet169"]
    assert all(a.name != b.name for a, b in zip(MODELS["today"], MODELS["served"]))


def test_soak_summary_compares_the_first_and_last_minute_after_warmup():
    from benchmarks.soak import summarise as soak_summary

    windows = [{"t_s": 10.0 * (i + 1), "answers": 100, "errors": 0, "img_s": 10.0, "p50_ms": 500.0,
                "p99_ms": 1000.0 if i < 9 else 1200.0, "rss_mb": 2000.0, "pss_mb": 1000.0 + (60.0 if i >= 9 else 0.0),
                "pss_by_process_mb": {"tritonserver": 300.0 + (60.0 if i >= 9 else 0.0)}} for i in range(15)]
    summary = soak_summary(windows, ["boom"], 150.0, 32, 10.0, warmup_s=30.0)
    assert summary["requests"] == 1501 and summary["errors"] == 1 and summary["first_error"] == "boom"
    assert summary["p99_first_min_ms"] == 1000.0 and summary["p99_last_min_ms"] == 1200.0  # windows 4-9 vs 10-15
    assert summary["p99_drift"] == pytest.approx(1.2) and summary["memory_growth"] == pytest.approx(0.06)
    assert summary["goals_met"] == {"errors": False, "memory_growth": False}
    assert summary["growth_by_process_mb"] == {"tritonserver": 60.0}


@pytest.mark.triton
def test_a_short_soak_against_the_server_records_every_window(triton, test_rows):
    from benchmarks.soak import soak

    blobs = [r.image.read_bytes() for r in test_rows[:8]]
    result = soak(triton.grpc_url, triton.process.pid, blobs, duration_s=12, concurrency=4, window_s=3, warmup_s=3,
                  log=lambda *_, **__: None)
    assert len(result["windows"]) == 4 and all(100 < w["pss_mb"] <= w["rss_mb"] for w in result["windows"])
    assert {"tritonserver", "cxr_classifier_0_0"} <= set(result["windows"][0]["pss_by_process_mb"])
    summary = result["summary"]
    assert summary["errors"] == 0 and summary["requests"] > 4 and summary["p99_first_min_ms"] > 0
