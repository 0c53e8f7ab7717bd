"""Triton python model ``triage_router``: probabilities + raw lung mask -> triage result, with the cascade.

It is the ensemble's last step and also passes the classifier's probabilities and CAM through, so every
ensemble output comes from here (see :data:`cxr.specs.ROUTER`).

:func:`cxr.cascade.route_batch` cleans the lung mask (MANet post-processing), computes lung coverage, judges
the image with the release's safety gate (:mod:`cxr.gate`: a request with an image that is not a frontal chest
radiograph fails with ``bad image: not a frontal chest radiograph (...)``; a borderline one is triaged at least
``expedited`` with a ``quality`` block) and applies the site thresholds (``thresholds.json`` beside this file;
this version folder is one release). When the first stage finds viral/covid likely, it runs the Cascade-SEMEnet
stage-2 model ``covid_stage2`` on the lung-only images, here with BLS; other studies do not pay for it. All
requests of one dynamic batch are routed together, so stage 2 gets one call per batch, not one per request; a
request that breaks the shared batch is then routed alone and fails alone. The result records which models ran.

Shadow mode: with the parameters ``shadow_model``/``shadow_version``/``shadow_fraction`` (set by
``cxr models shadow``), a sampled fraction of studies is also sent to that candidate classifier version (BLS,
same inputs as the serving classifier got); its answer is never returned, only compared:
``cxr_shadow_comparisons{label, agree}`` counts agreement of the top finding per serving label.

Custom metrics (python backend metrics API, on Triton's :8002 beside its own): studies per priority and per
top finding, gate decisions by detector, a histogram of every class probability, how often stage 2 ran (or failed), shadow agreement.
"""
import json
import os
import random
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

# This version's own copy of the runtime package comes first: the repository runs the code it was built with,
# not whatever `cxr` the host happens to have installed (tests/model_repository/test_self_contained.py).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cxr.batching import concat_requests
from cxr.cascade import route_batch
from cxr.labels import LABELS
from cxr.metrics import record
from cxr.release_record import read_release
from cxr.specs import CLASSIFIER, COVID_STAGE2, ROUTER
from cxr.triage import Thresholds


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        model_dir = os.path.join(args["model_repository"], args["model_version"])
        self.thresholds = Thresholds.load(os.path.join(model_dir, params.get("thresholds_file", "thresholds.json")))
        # This router version is one release: it pins the model versions (reported with every result) and
        # the stage-2 version it calls (export/release.py writes it).
        release = read_release(model_dir)
        self.release, self.model_versions = release["release"], release["model_versions"]
        self.stage2_model = params.get("stage2_model", COVID_STAGE2.role)
        self.stage2_version = int(release["models"][self.stage2_model])
        self.input_names = [t.name for t in ROUTER.inputs]
        self.metrics = RouterMetrics()
        self.shadow = Shadow.from_params(params, self.metrics)

    def execute(self, requests):
        inputs = [[pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.input_names] for r in requests]
        try:
            routed = self._route(inputs)  # the whole dynamic batch at once: one stage-2 call for all its studies
        except Exception:  # one request broke the shared batch: route each alone, so only that one fails
            routed = [self._route_alone(x) for x in inputs]
        return [self._respond(x, r) for x, r in zip(inputs, routed)]

    def _route(self, inputs):
        """Each request's routed studies, all requests' studies routed by one :func:`route_batch` call."""
        (probs, sizes), (cam, _), (raw, _), (cls_image, _) = (concat_requests([x[k] for x in inputs]) for k in range(4))
        routed = route_batch(probs, raw, cls_image, self.thresholds, self._stage2, self.stage2_model, cams=cam)
        ends = np.cumsum(sizes)
        return [routed[end - size:end] for size, end in zip(sizes, ends)]

    def _route_alone(self, x):
        try:
            return self._route([x])[0]
        except Exception as exc:
            return exc

    def _respond(self, x, routed):
        """One request's response: its results, or its error (an exception, or the gate's refusal)."""
        if isinstance(routed, Exception):
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"triage failed: {routed!r}"))
        probs, cam, raw_masks, cls_images = x
        if self.thresholds.gate is not None:
            for r in routed:
                self.metrics.observe_gate(r.verdict)
        refused = [(i, r.refused) for i, r in enumerate(routed) if r.refused]
        if refused:  # this request fails (it is one study in practice); other requests of the batch are unaffected
            i, message = refused[0]
            where = f" (image {i + 1} of {len(routed)})" if len(routed) > 1 else ""
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad image{where}: {message}"))
        if self.shadow is not None:
            self.shadow.compare(probs, raw_masks, cls_images)  # never raises: the shadow cannot fail a request
        labels, payloads = [], []
        for r in routed:
            payload = r.result.to_dict()
            payload["model_versions"] = self.model_versions
            payload["release"] = self.release
            self.metrics.observe(payload, probs[len(labels)])
            labels.append(r.result.top_finding.encode())
            payloads.append(json.dumps(payload).encode())
        return pb_utils.InferenceResponse([
            pb_utils.Tensor("label", np.array(labels, dtype=object).reshape(-1, 1)),
            pb_utils.Tensor("triage", np.array(payloads, dtype=object).reshape(-1, 1)),
            pb_utils.Tensor("lung_fraction", np.array([r.lung_fraction for r in routed], dtype=np.float32).reshape(-1, 1)),
            pb_utils.Tensor("lung_mask", np.stack([r.mask[None] for r in routed]).astype(np.uint8)),
            pb_utils.Tensor("probabilities", probs),
            pb_utils.Tensor("cam", cam),
        ])

    def _stage2(self, images):
        """Covid probabilities from the stage-2 model (BLS), or ``(None, error)``."""
        request = pb_utils.InferenceRequest(
            model_name=self.stage2_model,
            model_version=self.stage2_version,
            requested_output_names=["stage2_probabilities"],
            inputs=[pb_utils.Tensor(COVID_STAGE2.inputs[0].name, images.astype(np.float32))],
        )
        response = request.exec()
        if response.has_error():
            return None, response.error().message()
        probs = pb_utils.get_output_tensor_by_name(response, "stage2_probabilities").as_numpy()
        return probs[:, COVID_STAGE2.labels.index("covid")], None


class Shadow:
    """Send a sampled fraction of studies to a candidate classifier version; count agreement, return nothing."""

    def __init__(self, model, version, fraction, metrics):
        self.model, self.version, self.fraction, self.metrics = model, version, fraction, metrics

    @classmethod
    def from_params(cls, params, metrics):
        if not params.get("shadow_model") or float(params.get("shadow_fraction", "0")) <= 0:
            return None
        return cls(params["shadow_model"], int(params["shadow_version"]), float(params["shadow_fraction"]), metrics)

    def compare(self, probs, raw_masks, cls_images):
        try:
            self._compare(probs, raw_masks, cls_images)
        except Exception:  # e.g. the candidate is being unloaded while this instance still shadows
            record(self.metrics.shadow_errors.increment, 1)

    def _compare(self, probs, raw_masks, cls_images):
        sampled = [i for i in range(len(probs)) if random.random() < self.fraction]
        if not sampled:
            return
        feeds = CLASSIFIER.feeds(cls_images[sampled], raw_masks[sampled])
        request = pb_utils.InferenceRequest(
            model_name=self.model, model_version=self.version, requested_output_names=["probabilities"],
            inputs=[pb_utils.Tensor(name, array.astype(np.float32)) for name, array in feeds.items()])
        response = request.exec()
        if response.has_error():
            record(self.metrics.shadow_errors.increment, 1)
            return
        candidate = pb_utils.get_output_tensor_by_name(response, "probabilities").as_numpy()
        for k, i in enumerate(sampled):
            serving, other = LABELS[int(np.argmax(probs[i]))], LABELS[int(np.argmax(candidate[k]))]
            record(self.metrics.shadow[(serving, serving == other)].increment, 1)


class RouterMetrics:
    """The router's Prometheus metrics (names are what deploy/grafana's dashboard queries)."""

    BUCKETS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]

    def __init__(self):
        counter, histogram = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.HISTOGRAM
        self.priority_family = pb_utils.MetricFamily("cxr_triage_priority", "Studies triaged, by priority", counter)
        self.finding_family = pb_utils.MetricFamily("cxr_triage_finding", "Studies triaged, by top finding", counter)
        self.probability_family = pb_utils.MetricFamily("cxr_class_probability", "Class probabilities", histogram)
        self.stage2_family = pb_utils.MetricFamily("cxr_cascade_stage2", "Cascade stage 2 runs, by outcome", counter)
        self.priority = {p: self.priority_family.Metric(labels={"priority": p}) for p in ("urgent", "expedited", "routine")}
        self.finding = {label: self.finding_family.Metric(labels={"label": label}) for label in LABELS}
        self.probability = {label: self.probability_family.Metric(labels={"label": label}, buckets=self.BUCKETS)
                            for label in LABELS}
        self.stage2 = {o: self.stage2_family.Metric(labels={"outcome": o}) for o in ("run", "skipped", "failed")}
        self.shadow_family = pb_utils.MetricFamily(
            "cxr_shadow_comparisons", "Shadow candidate vs serving top finding, by serving label", counter)
        self.shadow = {(label, agree): self.shadow_family.Metric(labels={"label": label, "agree": str(agree).lower()})
                       for label in LABELS for agree in (True, False)}
        # a family must outlive its metrics: keep a reference to every one
        self.shadow_errors_family = pb_utils.MetricFamily("cxr_shadow_errors", "Shadow requests that failed", counter)
        self.shadow_errors = self.shadow_errors_family.Metric(labels={})
        self.gate_family = pb_utils.MetricFamily(
            "cxr_gate_decisions", "Safety-gate decisions (refuse / flag / accept), by the detector that decided", counter)
        self.gate = {}

    def observe_gate(self, verdict):
        key = (verdict.decision, verdict.detector or "none")
        if key not in self.gate:
            self.gate[key] = self.gate_family.Metric(labels={"decision": key[0], "detector": key[1]})
        record(self.gate[key].increment, 1)

    def observe(self, payload, probabilities):
        record(self.priority[payload["priority"]].increment, 1)
        record(self.finding[payload["top_finding"]].increment, 1)
        for label, p in zip(LABELS, probabilities):
            record(self.probability[label].observe, float(p))
        cascade = payload.get("cascade")
        record(self.stage2["skipped" if cascade is None else "failed" if cascade.get("error") else "run"].increment, 1)
