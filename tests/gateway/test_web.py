"""The upload page in a real browser (Debian Chromium via Playwright) against the real Triton server."""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from ops.ports import free_port

pytestmark = [pytest.mark.triton, pytest.mark.slow]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"


@pytest.fixture
def page_url(triton):
    from werkzeug.serving import make_server

    from gateway.web import create_app

    server = make_server("127.0.0.1", free_port(), create_app(triton.grpc_url), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


@pytest.fixture
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is not installed (make setup installs it)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def test_upload_a_real_image_and_read_the_result(page_url, browser, test_rows, tmp_path):
    from cxr.labels import LABELS

    row = next(r for r in test_rows if r.label == "covid")
    image = tmp_path / row.image.name
    image.write_bytes(row.image.read_bytes())
    page = browser.new_page()
    page.goto(page_url)
    page.set_input_files("#image", str(image))
    page.click("#submit")
    page.wait_for_selector("#priority", timeout=60_000)
    assert page.inner_text("#priority") in {"urgent", "expedited", "routine"}
    assert page.inner_text("#finding") in LABELS
    cells = dict(zip(*[iter(page.locator("#probabilities td").all_inner_texts())] * 2))
    assert list(cells) == list(LABELS) and cells["tb"] == "untrained (no training data)"
    trained = [float(cells[k]) for k in LABELS if k != "tb"]  # the tb column's share (untrained) is not shown
    assert all(0 <= p <= 1 for p in trained) and 0.9 <= sum(trained) <= 1.001
    assert page.locator("#overlay").evaluate("img => img.naturalWidth") > 100  # the heatmap really rendered
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "upload_page.png"), full_page=True)


def test_a_broken_file_shows_the_reason_plainly(page_url, browser, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    page = browser.new_page()
    page.goto(page_url)
    page.set_input_files("#image", str(broken))
    page.click("#submit")
    page.wait_for_selector("#error", timeout=60_000)
    assert "bad image" in page.inner_text("#error")
    page.goto(page_url)  # and the service still answers
    assert page.locator("#submit").is_visible()
