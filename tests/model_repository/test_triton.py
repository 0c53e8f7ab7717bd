"""The real Triton server on the built repository, called over gRPC like a PACS integration."""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from client.grpc_client import TriageClient
from cxr.pipeline import LocalPipeline
from cxr.labels import LABELS, UNTRAINED
from cxr.specs import CLASSIFIER, CLS_MASK, MODEL_SPECS
from tests.corpus import CASES
from tests.images import png_bytes

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def client(triton):
    c = TriageClient(triton.grpc_url, outputs=("label", "triage", "lung_fraction", "probabilities", "lung_mask", "cam"))
    yield c
    c.close()


def test_real_test_images_match_the_onnx_pipeline(client, repository, test_rows):
    """Served results (dynamic batching, python steps) equal the in-process ONNX pipeline on the same files."""
    rows = test_rows[:12]
    served = list(client.triage_many([(r.image.name, r.image.read_bytes()) for r in rows], concurrency=6))
    local = LocalPipeline(repository).run_batch([r.image.read_bytes() for r in rows])
    for s, l in zip(served, local):
        assert s.error is None, s.error
        assert s.label in LABELS and s.triage["priority"] in ("urgent", "expedited", "routine")
        assert s.triage["thresholds_version"] and set(s.triage["model_versions"]) == set(MODEL_SPECS)
        assert s.triage["models_run"] == l.triage["models_run"] and s.triage["priority"] == l.triage["priority"]
        np.testing.assert_allclose(s.arrays["probabilities"][0], l.probabilities, atol=1e-4)
        assert abs(s.arrays["probabilities"][0].sum() - 1) < 1e-3  # the tensor keeps all five columns
        assert s.probabilities["tb"] is None  # untrained: reported as no probability
        assert [s.probabilities[k] for k in LABELS if k != "tb"] == pytest.approx(s.arrays["probabilities"][0][:4], abs=1e-4)
        assert s.arrays["lung_mask"].shape == (1, 1, 256, 256) and s.arrays["cam"].shape == (1, 5, 8, 8)
        assert (s.arrays["lung_mask"][0, 0] == l.lung_mask).mean() > 0.999
        assert 0.05 < s.lung_fraction < 0.9


def test_the_corpus_gets_clear_errors_while_good_images_in_the_same_burst_succeed(client, triton, corpus, corpus_source):
    """Every corpus case (tests/corpus.py) over gRPC, each next to a good image so they share dynamic batches."""
    reference = client.triage(png_bytes(corpus_source.gray), "reference")
    items = []
    for case in CASES:
        items += [(case.name, corpus[case.name]), (f"good-{case.name}", corpus_source.jpeg)]
    results = {r.name: r for r in client.triage_many(items, concurrency=16)}
    for case in CASES:
        got = results[case.name]
        if case.served_error is not None:
            assert got.error and case.served_error in got.error, (case.name, got.error)
        else:
            assert got.error is None, (case.name, got.error)
            if case.same_picture:  # the same picture in another container: the same answer
                assert got.label == reference.label, case.name
                assert max(abs(got.probabilities[k] - reference.probabilities[k]) for k in LABELS
                           if k not in UNTRAINED) < 0.1, case.name
        assert results[f"good-{case.name}"].error is None
    assert triton.is_ready() and client.is_ready()


def test_oversized_message_from_a_raw_client_is_refused_by_the_server(triton, corpus):
    """TriageClient refuses an 80 MB input before sending; a raw client with larger limits reaches the server."""
    data = corpus["oversized-80mb"]
    raw = grpcclient.InferenceServerClient(triton.grpc_url, channel_args=[("grpc.max_send_message_length", 2**30)])
    inp = grpcclient.InferInput("image_bytes", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[data]], dtype=object))
    with pytest.raises(InferenceServerException, match="input too large: 83,"):
        raw.infer("cxr_triage", [inp])
    assert raw.is_server_ready()


def _tensor(name: str, array: np.ndarray, datatype: str | None = None) -> grpcclient.InferInput:
    datatype = datatype or {"f": "FP32", "i": "INT64", "O": "BYTES"}[array.dtype.kind]
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


_IMAGE = np.zeros((1, 1, 256, 256), np.float32)
# (case, model, inputs, expected error): what a raw tritonclient can send wrong, below the image level
def _classifier_rest() -> list:
    """The classifier's inputs after the image: the lung mask, if it takes one."""
    return [_tensor(t.name, _IMAGE) for t in CLASSIFIER.inputs[1:]]


RAW_TENSOR_CASES = [
    ("fp32-instead-of-bytes", "cxr_triage", lambda: [_tensor("image_bytes", np.zeros((1, 1), np.float32))],
     "data-type is 'FP32', but model 'cxr_triage' expects 'BYTES'"),
    ("unknown-input-name", "cxr_triage", lambda: [_tensor("pixels", np.array([[b"x"]], dtype=object))],
     "unexpected inference input 'pixels'"),
    ("no-inputs", "cxr_triage", lambda: [], "missing required input(s) ['image_bytes']"),
    ("two-elements-per-image", "cxr_triage", lambda: [_tensor("image_bytes", np.array([[b"a", b"b"]], dtype=object))],
     "Expected [-1,1], got [1,2]"),
    ("batch-above-max", "cxr_triage", lambda: [_tensor("image_bytes", np.array([[b"a"]] * 33, dtype=object))],
     "batch-size must be <= 32"),
    ("empty-batch", "cxr_triage", lambda: [_tensor("image_bytes", np.zeros((0, 1), dtype=object))],
     "expected 1 string elements"),
    ("wrong-image-size", "lung_segmentation", lambda: [_tensor("seg_image", np.zeros((1, 1, 100, 100), np.float32))],
     "Expected [-1,1,256,256], got [1,1,100,100]"),
    ("int64-image", "lung_segmentation", lambda: [_tensor("seg_image", _IMAGE.astype(np.int64))],
     "data-type is 'INT64', but model 'lung_segmentation' expects 'FP32'"),
    ("nan-image", "cxr_classifier", lambda: [_tensor("cls_image", np.full_like(_IMAGE, np.nan)), *_classifier_rest()],
     "input 'cls_image' has non-finite values (NaN or Inf)"),
    # a mask-attention classifier refuses a non-finite mask; one without (the served one) refuses any mask
    ("inf-mask", "cxr_classifier", lambda: [_tensor("cls_image", _IMAGE), _tensor("lung_mask", np.full_like(_IMAGE, np.inf))],
     "input 'lung_mask' has non-finite values (NaN or Inf)" if CLS_MASK in CLASSIFIER.inputs
     else "expected 1 inputs but got 2 inputs for model 'cxr_classifier'"),
    ("inf-image", "lung_segmentation", lambda: [_tensor("seg_image", np.full_like(_IMAGE, -np.inf))],
     "input 'seg_image' has non-finite values (NaN or Inf)"),
]


@pytest.mark.parametrize("case,model,inputs,error", RAW_TENSOR_CASES, ids=[c[0] for c in RAW_TENSOR_CASES])
def test_wrong_tensors_from_a_raw_tritonclient_are_refused(triton, client, xray_jpeg, case, model, inputs, error):
    """Each refused with its reason, while a good request sent at the same moment to the same model succeeds."""
    raw = grpcclient.InferenceServerClient(triton.grpc_url)
    good_inputs = {"cxr_triage": lambda: [_tensor("image_bytes", np.array([[xray_jpeg]], dtype=object))],
                   "lung_segmentation": lambda: [_tensor("seg_image", _IMAGE)],
                   "cxr_classifier": lambda: [_tensor("cls_image", _IMAGE), *_classifier_rest()]}[model]
    with ThreadPoolExecutor(2) as pool:
        good = pool.submit(raw.infer, model, good_inputs())
        with pytest.raises(InferenceServerException) as refused:
            raw.infer(model, inputs())
        good.result()  # raises if the good request failed
    assert error in refused.value.message()
    assert client.is_ready()


def test_batch_of_two_images_in_one_request(triton, xray_jpeg):
    raw = grpcclient.InferenceServerClient(triton.grpc_url)
    inp = grpcclient.InferInput("image_bytes", [2, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[xray_jpeg], [xray_jpeg]], dtype=object))
    result = raw.infer("cxr_triage", [inp], outputs=[grpcclient.InferRequestedOutput("probabilities")])
    probs = result.as_numpy("probabilities")
    assert probs.shape == (2, 5) and np.allclose(probs[0], probs[1], atol=1e-5)


def test_cli_classify_json(triton, tmp_path, xray_jpeg):
    (tmp_path / "a.jpg").write_bytes(xray_jpeg)
    (tmp_path / "b.jpg").write_bytes(xray_jpeg[:500])
    proc = subprocess.run([sys.executable, "-m", "cli.main", "classify", str(tmp_path), "--url", triton.grpc_url, "--json"],
                          capture_output=True, text=True, timeout=120)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 1, proc.stderr  # one image rejected
    good = next(r for r in lines if r["file"].endswith("a.jpg"))
    assert set(good) == {"file", "label", "probabilities", "triage", "lung_fraction", "model_versions", "latency_ms"}
    assert set(good["probabilities"]) == set(LABELS) and good["triage"]["priority"]
    bad = next(r for r in lines if r["file"].endswith("b.jpg"))
    assert set(bad) == {"file", "error"} and "JPEG" in bad["error"]


def test_served_evaluation_meets_the_segmentation_bar_and_equals_onnx(triton, repository, data_dir):
    """Shipped weights on the test split, through the served ensemble, equal the ONNX path.

    The floor guards against regressions at the measured level (test IoU 0.911 at 256 px on 2 CPU cores);
    the issue's goal of 0.93 (MANet reports 0.925 at 512 px) is not reached yet: see the README.
    """
    from client.evaluate import evaluate

    served = evaluate(data_dir / "manifest.csv", "test", url=triton.grpc_url)
    local = evaluate(data_dir / "manifest.csv", "test", repository=repository)
    assert not served["errors"]
    assert served["segmentation"]["iou"] >= 0.90, served["segmentation"]
    assert served["segmentation"]["iou"] == pytest.approx(local["segmentation"]["iou"], abs=1e-3)
    assert served["classification"]["accuracy"] == pytest.approx(local["classification"]["accuracy"], abs=0.011)
    assert served["classification"]["n"] == 99
    assert served["classification"]["accuracy"] >= 0.6  # measured 0.687; a regression guard, not a claim


def test_urgent_and_default_priority_requests_both_succeed(client, xray_jpeg):
    """Every dynamic batcher has two priority levels; the gateway sends DICOM Priority HIGH studies as 1.

    (Triton treats 0 and out-of-range priorities as the default level, so there is no error case to test.)
    """
    urgent = client.triage(xray_jpeg, priority=1)
    normal = client.triage(xray_jpeg, priority=0)
    assert urgent.error is None and normal.error is None
    assert urgent.probabilities == normal.probabilities


def test_system_shared_memory_client_gets_the_same_answers(triton, client, test_rows):
    blobs = [r.image.read_bytes() for r in test_rows[:4]]
    shm_client = TriageClient(triton.grpc_url, outputs=("label", "probabilities"), shared_memory="system",
                              admin_key=triton.admin_key)
    try:
        answers = list(shm_client.triage_many([(str(i), b) for i, b in enumerate(blobs)], concurrency=2))
        assert len(shm_client.client.get_system_shared_memory_status(headers=triton.admin_headers).regions) >= 1
    finally:
        shm_client.close()
    assert all(a.error is None for a in answers)
    assert [a.probabilities for a in answers] == [client.triage(b).probabilities for b in blobs]
    status = TriageClient(triton.grpc_url).client.get_system_shared_memory_status(headers=triton.admin_headers)
    assert not status.regions  # cleaned up


def test_admin_apis_need_the_key_inference_does_not(triton, client, xray_jpeg):
    """Model load/unload, shared memory and logging are restricted (cxr serve's default); inference is open."""
    raw = grpcclient.InferenceServerClient(triton.grpc_url)
    for call in (lambda h: raw.unload_model("cxr_triage", headers=h), lambda h: raw.load_model("cxr_triage", headers=h),
                 lambda h: raw.get_system_shared_memory_status(headers=h), lambda h: raw.get_log_settings(headers=h)):
        with pytest.raises(InferenceServerException, match="(?i)restricted|not allowed|unavailable|permission"):
            call(None)
        with pytest.raises(InferenceServerException, match="(?i)restricted"):
            call({"triton-grpc-protocol-cxr-admin-key": "wrong"})
    raw.get_log_settings(headers=triton.admin_headers)  # the key opens it
    assert client.triage(xray_jpeg).error is None and raw.is_model_ready("cxr_triage")


def test_cascade_stage2_runs_only_when_viral_or_covid_is_likely(triton, client, repository, test_rows):
    """The router calls covid_stage2 (BLS) for studies over the run_at threshold and skips the others."""
    from cxr.triage import Thresholds

    thresholds = Thresholds.load(repository / "triage_router" / "1" / "thresholds.json")
    stats = lambda: int(grpcclient.InferenceServerClient(triton.grpc_url).get_inference_statistics(  # noqa: E731
        "covid_stage2", as_json=True)["model_stats"][0]["inference_stats"]["success"].get("count", 0))
    outcomes = []
    for row in test_rows[:30]:
        before = stats()
        out = client.triage(row.image.read_bytes())
        p = out.probabilities
        due = p["viral"] + p["covid"] >= thresholds.cascade["run_at"]
        ran = "covid_stage2" in out.triage["models_run"]
        assert ran == due, (row.image.name, p, out.triage)
        assert stats() - before == int(ran)  # the stage-2 model executed exactly when the branch was taken
        if ran:
            assert 0 <= out.triage["cascade"]["covid_probability"] <= 1
            assert any(r.startswith("stage 2 covid p=") for r in out.triage["reasons"])
        else:
            assert out.triage["cascade"] is None
        outcomes.append(ran)
    assert any(outcomes) and not all(outcomes), "the sample should contain both branches"


def test_stage2_runs_once_per_router_batch_not_once_per_request(triton, client, test_rows):
    """A burst of studies that all need stage 2: every one gets its stage-2 answer, and covid_stage2 executes at
    most once per execution of the router (it routes each dynamic batch together, however many requests it holds)."""
    raw = grpcclient.InferenceServerClient(triton.grpc_url)

    def counts(model):
        stats = raw.get_inference_statistics(model, as_json=True)["model_stats"][0]
        return int(stats.get("execution_count", 0)), int(stats.get("inference_count", 0))

    due = [row.image.read_bytes() for row in test_rows[:40]
           if "covid_stage2" in client.triage(row.image.read_bytes()).triage["models_run"]][:8]
    assert len(due) >= 4, "the sample should hold studies that need stage 2"
    (router_runs, _), (stage2_runs, stage2_images) = counts("triage_router"), counts("covid_stage2")
    items = [(f"{k}-{i}", data) for k in range(4) for i, data in enumerate(due)]
    results = list(client.triage_many(items, concurrency=16))
    assert all(r.error is None and r.triage["cascade"]["covid_probability"] is not None for r in results)
    (router_after, _), (stage2_after, stage2_images_after) = counts("triage_router"), counts("covid_stage2")
    assert stage2_images_after - stage2_images == len(items)  # every study ran stage 2, once
    assert 1 <= stage2_after - stage2_runs <= router_after - router_runs


def test_what_is_not_a_frontal_chest_radiograph_is_refused_on_the_grpc_path(client, triton, corpus, corpus_source):
    """The safety gate runs in the ensemble: a photograph (pixels) and a lateral DICOM (tags) each fail their own
    request with the reason, counted by decision; a real CXR in the same burst is triaged."""
    import urllib.request

    from skimage.data import astronaut, chelsea

    items = [("cat", png_bytes(chelsea())), ("person", png_bytes(astronaut())), ("lateral", corpus["dicom-lateral"]),
             ("cxr", corpus_source.jpeg)]
    got = {r.name: r for r in client.triage_many(items, concurrency=4)}
    for name in ("cat", "person"):
        assert got[name].error.startswith("bad image: not a frontal chest radiograph ("), got[name].error
        assert "score" in got[name].error and ">=" in got[name].error
    assert "view position LL is not frontal" in got["lateral"].error
    assert got["cxr"].error is None and got["cxr"].triage["quality"]["decision"] in ("accept", "flag")
    with urllib.request.urlopen(f"http://localhost:{triton.metrics_port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    refused = [line for line in metrics.splitlines() if line.startswith("cxr_gate_decisions{") and 'decision="refuse"' in line]
    assert refused and sum(float(line.rsplit(" ", 1)[1]) for line in refused) >= 2
