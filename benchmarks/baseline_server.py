"""The naive alternative: a Flask app running the same models in PyTorch eager mode, one request at a time.

    python -m benchmarks.baseline_server --port 8500 [--models served|today]

This is what a small hospital team would write first (the "B/S" web system of the DPN92+GCNet paper):
``POST /triage`` with the encoded image as the body, the shipped weights in PyTorch, the same
``cxr`` decoding, preprocessing, mask post-processing, thresholds and cascade as the served ensemble, Flask's
own server with ``threaded=False``. No batching, no pipelining. It exists only to be measured against.

``--models today`` runs the segmenter and stage 2 served before the distilled MobileNetV2 U-Net and the slim
SE-ResNet18 (ResUNet-18, 3.48 GMAC; SE-DenseNet169), with the served classifier: what a site would otherwise be
running (issue 19's ratio (a)); the default runs the served models, so the ratio measures the serving stack alone
(ratio (b)). Both use the served thresholds release.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from flask import Flask, Response, request

from cxr.cascade import route_batch
from cxr.labels import LABELS
from cxr.pixels import ImageError
from cxr.preprocess import prepare_bytes
from cxr.specs import CLASSIFIER, COVID_STAGE2, EARLIER_SEGMENTATION, EARLIER_STAGE2, LUNG_SEGMENTATION
from cxr.triage import Thresholds
from training.common import REPO
from training.serving_graph import serving_graph

THRESHOLDS = REPO / "configs" / "triage_thresholds.json"
MODELS = {"served": (LUNG_SEGMENTATION, COVID_STAGE2), "today": (EARLIER_SEGMENTATION, EARLIER_STAGE2)}  # segmenter, stage 2


def create_app(threads: int = 2, models: str = "served") -> Flask:
    torch.set_num_threads(threads)
    segmenter_spec, stage2_spec = MODELS[models]
    segmenter, classifier = serving_graph(segmenter_spec), serving_graph(CLASSIFIER)
    stage2 = serving_graph(stage2_spec)
    covid = COVID_STAGE2.labels.index("covid")
    thresholds = Thresholds.load(THRESHOLDS)

    @torch.no_grad()
    def run_stage2(images: np.ndarray):
        return stage2(torch.from_numpy(images))[1][:, covid].numpy(), None
    app = Flask(__name__)

    @app.post("/triage")
    def triage_image():
        try:
            seg_in, cls_in = prepare_bytes(request.get_data(), (LUNG_SEGMENTATION, CLASSIFIER))
        except ImageError as exc:
            return Response(json.dumps({"error": f"bad image: {exc}"}), status=400, mimetype="application/json")
        with torch.no_grad():
            raw = segmenter(torch.from_numpy(seg_in[None]))
            _, probs, cam = classifier(*CLASSIFIER.feeds(torch.from_numpy(cls_in[None]), raw).values())
        # the same routing, gate and cascade as the served router
        (routed,) = route_batch(probs.numpy(), raw.numpy(), cls_in[None], thresholds, run_stage2, cams=cam.numpy())
        if routed.refused:
            return Response(json.dumps({"error": f"bad image: {routed.refused}"}), status=400, mimetype="application/json")
        result = routed.result.to_dict()
        result["probabilities"] = dict(zip(LABELS, probs[0].tolist()))
        return Response(json.dumps(result), mimetype="application/json")

    @app.get("/health")
    def health():
        return "ok"

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", choices=sorted(MODELS), default="served")
    args = parser.parse_args(argv)
    create_app(args.threads, args.models).run(host="127.0.0.1", port=args.port, threaded=False)


if __name__ == "__main__":
    main()
