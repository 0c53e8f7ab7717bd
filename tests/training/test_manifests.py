"""Several manifests read as one data set: cohorts by file prefix, no patient in two splits."""
from __future__ import annotations

import pytest


def test_shared_manifests_read_together_without_a_patient_in_two_splits(data_dir):
    from training.data.manifest import KERMANY224_MANIFEST, read_manifests

    if not KERMANY224_MANIFEST.exists():
        pytest.fail(f"this test needs the kermany224 data set: no {KERMANY224_MANIFEST} (it sits beside the CXR data "
                    "set: ../shared/data/kermany224, or CXR_DATA/../kermany224)", pytrace=False)
    records = read_manifests([data_dir / "manifest.csv", KERMANY224_MANIFEST])  # raises on a leak
    assert {r.cohort for r in records} == {"cohen", "kermany", "kermany224"}
    assert not any(r.mask for r in records if r.cohort == "kermany224")
    train = read_manifests([data_dir / "manifest.csv", KERMANY224_MANIFEST], "train")
    assert len(train) == 806 + 3837


def test_a_patient_in_two_splits_across_manifests_is_refused(tmp_path):
    from training.data.manifest import read_manifests

    head = "file,mask,label,source,original_path,patient_id,license,split\n"
    (tmp_path / "a.csv").write_text(head + "images/a_1.jpg,,normal,s,o,p-1,CC,train\n")
    (tmp_path / "b.csv").write_text(head + "images/b_1.jpg,,normal,s,o,p-1,CC,test\n")
    with pytest.raises(ValueError, match="patient p-1 is in split 'train' and 'test'"):
        read_manifests([tmp_path / "a.csv", tmp_path / "b.csv"])
