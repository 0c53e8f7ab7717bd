"""Client pieces that need no server: file expansion, the table, the JSON line shape, samples, server errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from client.classify import format_table
from client.files import expand
from client.grpc_client import TriageOutput
from cxr.labels import LABELS
from ops.server import ServerError, TritonServer


def test_expand_folders_and_missing_paths(tmp_path):
    (tmp_path / "a.dcm").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.PNG").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in expand([tmp_path])] == ["a.dcm", "b.PNG"]
    with pytest.raises(FileNotFoundError, match="nope"):
        expand([tmp_path / "nope"])


def _result(name: str, **kw) -> TriageOutput:
    probs = {label: 0.2 for label in LABELS}
    return TriageOutput(name, label="normal", probabilities=probs, triage={"priority": "routine", "model_versions": {"m": "1"}},
                        lung_fraction=0.31, latency_ms=12.3, **kw)


def test_table_and_json_lines():
    results = [_result("/x/a.jpg"), TriageOutput("/x/bad.jpg", error="bad image: truncated")]
    table = format_table(results).splitlines()
    assert table[0].split()[:3] == ["file", "priority", "finding"] and "a.jpg" in table[2]
    assert table[3] == "bad.jpg  ERROR  bad image: truncated"
    line = results[0].to_json()
    assert line["model_versions"] == {"m": "1"} and "model_versions" not in line["triage"]
    assert results[1].to_json() == {"file": "/x/bad.jpg", "error": "bad image: truncated"}


def test_demo_samples_need_no_data_set(tmp_path):
    """The demo's sample step with the data folder pointing nowhere: everything it needs ships in ``samples/``."""
    import os
    import subprocess
    import sys

    from client.samples import BUNDLED
    from cxr.pixels import ImageError, decode_image

    env = {**os.environ, "CXR_DATA": str(tmp_path / "nowhere")}
    done = subprocess.run([sys.executable, "-m", "client.samples", "--out", str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    files = [Path(line) for line in done.stdout.split()]
    assert {f.name.split("_")[0] for f in files} >= {"normal", "bacterial", "viral", "covid"}
    assert decode_image(next(f for f in files if f.suffix == ".dcm").read_bytes()).format == "dicom"
    with pytest.raises(ImageError):
        decode_image((tmp_path / "out" / "broken_truncated.jpg").read_bytes())
    assert sum(f.stat().st_size for f in BUNDLED.iterdir()) < 1_000_000
    attribution = (BUNDLED / "ATTRIBUTION.md").read_text()
    assert all(f"`{image.name}`" in attribution for image in BUNDLED.glob("*.jpg"))


def test_bundled_samples_are_redistributable_test_images(data_dir):
    """Each bundled image is a test-split image of the data set under a CC BY licence without NC/ND terms."""
    import csv

    from client.samples import BUNDLED

    with (data_dir / "manifest.csv").open(newline="") as f:
        by_bytes = {(data_dir / r["file"]).read_bytes(): r for r in csv.DictReader(f)}
    for image in BUNDLED.glob("*.jpg"):
        row = by_bytes[image.read_bytes()]
        assert row["split"] == "test" and image.name.startswith(row["label"] + "_"), image.name
        assert row["license"].startswith("CC BY ") and "N" not in row["license"].split("(")[0], row["license"]


def test_server_refuses_a_folder_that_is_not_a_repository(tmp_path):
    with pytest.raises(ServerError, match="not a model repository"):
        TritonServer(tmp_path)
