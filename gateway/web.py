"""A small upload page (the "B/S" system of the DPN92+GCNet paper), served by the gateway process.

    GET  /          the form: pick a PNG, JPEG or DICOM file
    POST /          triage it through the same ``cxr_triage`` ensemble; the page shows the priority, the
                    finding, the five probabilities and the heatmap overlay, or the server's error, plainly
    GET  /metrics   the gateway's Prometheus metrics

Nothing is stored: the upload goes to Triton and the answer comes back to the browser.
"""
from __future__ import annotations

import base64
import html

import cv2
from flask import Flask, Response, request

from client.grpc_client import TriageClient
from cxr.labels import LABELS
from cxr.pixels import MAX_BYTES, decode_image
from cxr.specs import ENSEMBLE_OUTPUTS
from gateway.results import Triaged, overlay

MAX_UPLOAD_BYTES = MAX_BYTES + 2**20  # the largest image the server accepts, plus the form's own bytes

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cxr-triage</title>
<style>
 body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 60rem; }}
 table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .3rem .7rem; text-align: left; }}
 .error {{ color: #a00; font-weight: bold; }} .urgent {{ color: #a00; }} .expedited {{ color: #b60; }}
 img {{ max-width: 100%; }} small {{ color: #666; }}
</style></head><body>
<h1>Chest X-ray triage</h1>
<p><small>Research software, not for clinical use.</small></p>
<form method="post" enctype="multipart/form-data">
 <input type="file" name="image" id="image" accept=".png,.jpg,.jpeg,.dcm,application/dicom,image/*">
 <button type="submit" id="submit">Triage</button>
</form>
{body}
</body></html>"""


def _probability(p: float | None) -> str:
    return "untrained (no training data)" if p is None else f"{p:.3f}"


def _result_html(name: str, out, overlay_png: str = "") -> str:
    if out.error is not None:
        return f'<p class="error" id="error">{html.escape(name)}: {html.escape(out.error)}</p>'
    priority = out.triage["priority"]
    rows = "".join(f"<tr><td>{label}</td><td>{_probability(out.probabilities[label])}</td></tr>" for label in LABELS)
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in out.triage.get("reasons", []))
    return f"""
<h2 id="result">{html.escape(name)}</h2>
<table id="summary">
 <tr><th>priority</th><td id="priority" class="{priority}">{priority}</td></tr>
 <tr><th>finding</th><td id="finding">{out.label}</td></tr>
 <tr><th>lung fraction</th><td>{out.lung_fraction:.3f}</td></tr>
 <tr><th>thresholds</th><td>{html.escape(str(out.triage.get("thresholds_version")))}</td></tr>
 <tr><th>models run</th><td id="models-run">{html.escape(", ".join(out.triage.get("models_run", [])))}</td></tr>
</table>
<ul>{reasons}</ul>
<h3>Probabilities</h3><table id="probabilities"><tr><th>label</th><th>probability</th></tr>{rows}</table>
<h3>Where the model looked</h3>
<img id="overlay" alt="class-activation heatmap over the image" src="data:image/png;base64,{overlay_png}">"""


def create_app(triton_url: str, registry=None) -> Flask:
    client = TriageClient(triton_url, outputs=tuple(t.name for t in ENSEMBLE_OUTPUTS))
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES

    @app.get("/")
    def form():
        return PAGE.format(body="")

    @app.post("/")
    def upload():
        file = request.files.get("image")
        if file is None or not file.filename:
            return PAGE.format(body='<p class="error" id="error">no file chosen</p>'), 400
        data = file.read()
        out = client.triage(data, name=file.filename)
        if out.error is not None:
            return PAGE.format(body=_result_html(file.filename, out)), 422
        return PAGE.format(body=_result_html(file.filename, out, _overlay_png(data, out)))

    @app.errorhandler(413)
    def too_large(_):
        return PAGE.format(body=f'<p class="error" id="error">file too large (maximum {MAX_BYTES // 2**20} MiB)</p>'), 413

    @app.get("/metrics")
    def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(registry) if registry is not None else b"", mimetype=CONTENT_TYPE_LATEST)

    return app


def _overlay_png(data: bytes, out) -> str:
    """The heatmap overlay as base64 PNG for an ``<img>`` data URL."""

    rgb = overlay(decode_image(data).pixels, Triaged.from_output(out))
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return base64.b64encode(png.tobytes()).decode() if ok else ""
