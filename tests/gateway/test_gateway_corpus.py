"""The bad-input corpus through the gateway's two entrances: C-STORE from a modality, and the upload page.

C-STORE: every case that is a DICOM dataset a PACS could send, each in its own transfer syntax. The gateway
accepts and spools them all (nothing is refused at the door, so nothing is lost), then each gets its
answer: a result package, an "AI result unavailable: <reason>" SR naming the problem, or a logged skip
for what is not a chest frontal radiograph. Upload page: every case; the page shows the error or the result.
"""
from __future__ import annotations

import html
import io
import re

import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage

from gateway.results import read_sr
from tests.conftest import write_artifact
from tests.corpus import CASES
from tests.gateway.conftest import c_store, results_by_class, wait_until

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def _expected_outcome(case) -> str:
    if case.gateway_skip:
        return "skipped"
    return "unavailable" if case.served_error else "result"


def test_every_dicom_case_sent_by_c_store_gets_its_answer(pacs_and_gateway, corpus):
    orthanc, gateway = pacs_and_gateway
    cases = [c for c in CASES if c.dicom_dataset]
    datasets = {c.name: pydicom.dcmread(io.BytesIO(corpus[c.name])) for c in cases}
    statuses = c_store(gateway.config.port, list(datasets.values()))
    assert statuses == [0x0000] * len(cases)  # all accepted into the spool

    uids = {name: ds.SOPInstanceUID for name, ds in datasets.items()}
    wait_until(lambda: all(gateway.spool.record(u) for u in uids.values()), timeout_s=300,
               what="every corpus instance to be handled")
    table = {}
    for case in cases:
        record = gateway.spool.record(uids[case.name])
        table[case.name] = record["outcome"]
        assert record["outcome"] == _expected_outcome(case), (case.name, record)
        if case.gateway_skip:
            assert case.gateway_skip in record["reason"], (case.name, record["reason"])
        elif case.served_error:
            assert case.served_error in record["reason"], (case.name, record["reason"])

    # the PACS got exactly one SR per answered instance; the unavailable ones say why
    answered = {uids[c.name] for c in cases if not c.gateway_skip}
    srs = results_by_class(orthanc, set(uids.values())).get(Comprehensive3DSRStorage, [])
    referenced = [read_sr(s)["image"] for s in srs]
    assert sorted(referenced) == sorted(answered)
    unavailable = [s for s in srs if read_sr(s)["status"] == "unavailable"]
    assert len(unavailable) == sum(1 for c in cases if c.served_error and not c.gateway_skip)
    assert gateway.spool.depth() == 0
    write_artifact("corpus_gateway_c_store", {"cases": len(cases), "outcomes": table})


def test_every_case_uploaded_on_the_page_shows_its_error_or_result(triton, corpus):
    from gateway.web import create_app

    app = create_app(triton.grpc_url)
    app.config["TESTING"] = True
    client = app.test_client()
    shown = {}
    for case in CASES:
        response = client.post("/", data={"image": (io.BytesIO(corpus[case.name]), f"{case.name}.bin")},
                               content_type="multipart/form-data")
        page = html.unescape(response.get_data(as_text=True))
        if case.served_error:
            assert response.status_code in (413, 422), (case.name, response.status_code)
            error = re.search(r'id="error">(.*?)</p>', page, re.S)
            assert error and case.served_error in error.group(1), (case.name, error and error.group(1))
            shown[case.name] = error.group(1)
        else:
            assert response.status_code == 200 and 'id="priority"' in page, case.name
            shown[case.name] = re.search(r'id="priority" class="\w+">(\w+)<', page).group(1)
    assert client.get("/").status_code == 200  # still serving
    write_artifact("corpus_gateway_upload", {"cases": len(CASES), "shown": shown})
