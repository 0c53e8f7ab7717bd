"""The messages that put a triage result on a worklist: HL7 v2 ORU^R01, a FHIR R4 bundle, an urgent webhook.

Each message has an identifier derived from the source instance (:func:`message_id`), the same every time the
instance is processed: a resend after a crash carries the same HL7 control id (MSH-10) and the same FHIR
identifiers (created with ``ifNoneExist``), so a receiver can drop a duplicate.

- **HL7 v2.5.1 ORU^R01**: PID from the DICOM patient attributes; OBR with the accession number (placer), the
  study UID (filler), the priority in OBR-5 and OBR-27.6 (``S`` urgent, ``A`` expedited, ``R`` routine) and
  result status ``P`` (preliminary: no person has read it); OBX for the finding (SNOMED CT, CWE), the priority
  and each trained label's probability (NM). Built as text, checked by parsing with python-hl7.
- **FHIR R4** transaction ``Bundle``: one ``Observation`` per trained label's probability, one for the triage
  priority, and a ``DiagnosticReport`` (status ``preliminary``, the finding as ``conclusionCode``) that links
  them; validated with fhir.resources' R4B models (R4B changes nothing in these two resources).
- **Webhook** (urgent results only): a small JSON document for a paging or chat system.
"""
from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone

import hl7
import hl7.util
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from cxr.labels import LABELS
from gateway.results import FINDING_CODES, MANUFACTURER, Triaged

HL7_PRIORITY = {"urgent": "S", "expedited": "A", "routine": "R"}  # HL7 table 0027: Stat, ASAP, Routine
SNOMED, LOINC = "http://snomed.info/sct", "http://loinc.org"
DICOM_UID = "urn:dicom:uid"
CODE_SYSTEM = "urn:cxr-triage"  # this project's codes (as 99CXRTRIAGE in the SR)
REPORT_CODE = {"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}


def message_id(source: Dataset, kind: str) -> str:
    """A stable id of ``kind`` (``hl7``, ``fhir``, ``webhook``) for the result of ``source``: a DICOM-style UID
    (``hl7``: its first 20 hex digits of SHA-256, as MSH-10 allows at most 20 characters in v2.5.1)."""
    uid = generate_uid(entropy_srcs=[str(source.SOPInstanceUID), "worklist", kind])
    return hashlib.sha256(uid.encode()).hexdigest()[:20].upper() if kind == "hl7" else uid


ENCODING = hl7.parse("MSH|^~\\&|")  # the delimiters of every message built here (MSH-1, MSH-2)


def _hl7(value) -> str:
    """A value that is not meant to have components, with HL7's delimiters (| ^ ~ \\ &) and line breaks escaped
    (python-hl7's :func:`hl7.util.escape`: ``\\F\\``, ``\\S\\``, ..., ``\\.br\\``; non-ASCII as ``\\Xhh\\``)."""
    text = "" if value is None else str(value).replace("\r\n", "\r").replace("\n", "\r")
    return hl7.util.escape(ENCODING, text) or ""


def _hl7_name(source: Dataset) -> str:
    """DICOM PN ``Family^Given^Middle^Prefix^Suffix`` maps onto HL7 XPN components one to one."""
    parts = str(source.get("PatientName", "") or "").split("=")[0].split("^")  # the alphabetic group only
    return "^".join(_hl7(p) for p in parts)


def _timestamp(source: Dataset) -> str:
    date, time_ = str(source.get("StudyDate", "") or ""), str(source.get("StudyTime", "") or "")
    return (date + time_.split(".")[0])[:14] if len(date) == 8 and date.isdigit() else ""


def hl7_oru(source: Dataset, result: Triaged, sending_facility: str = "CXRGW", receiving_application: str = "RIS",
            receiving_facility: str = "") -> str:
    """HL7 v2.5.1 ORU^R01 of the result (segments separated by ``\\r``)."""
    now = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    priority = HL7_PRIORITY[result.triage["priority"]]
    finding = FINDING_CODES[result.label]
    segments = [
        f"MSH|^~\\&|{MANUFACTURER.upper()}|{_hl7(sending_facility)}|{_hl7(receiving_application)}|"
        f"{_hl7(receiving_facility)}|{now}||ORU^R01^ORU_R01|"
        f"{message_id(source, 'hl7')}|P|2.5.1",
        f"PID|1||{_hl7(source.get('PatientID', ''))}||{_hl7_name(source)}||{_hl7(source.get('PatientBirthDate', ''))}|"
        f"{_hl7(source.get('PatientSex', ''))}",
        f"OBR|1|{_hl7(source.get('AccessionNumber', ''))}|{source.StudyInstanceUID}^DICOM|"
        f"{REPORT_CODE['code']}^{REPORT_CODE['display']}^LN|{priority}||{_timestamp(source)}|||||||||||||||{now}||"
        f"CR|P||^^^^^{priority}",
        f"OBX|1|CWE|121071^Finding^DCM||{finding.value}^{finding.meaning}^SCT||||||P",
        f"OBX|2|ST|260870009^Priority^SCT||{result.triage['priority']}||||||P",
    ]
    for label in LABELS:
        p = result.probabilities.get(label)
        if p is None:  # untrained label: not reported
            continue
        segments.append(f"OBX|{len(segments) - 2}|NM|122157^Probability of {FINDING_CODES[label].meaning}^DCM|{label}|{p:.4f}|"
                        f"1^^UCUM|||||P")
    for reason in result.triage.get("reasons", []):
        segments.append(f"OBX|{len(segments) - 2}|ST|CXR-5^Triage reason^99CXRTRIAGE||{_hl7(reason)}||||||P")
    return "\r".join(segments)


def fhir_bundle(source: Dataset, result: Triaged) -> dict:
    """A FHIR R4 transaction bundle (JSON-ready dict): the probability and priority Observations and the
    DiagnosticReport that links them, each created only if its identifier does not exist yet."""
    report_id = message_id(source, "fhir")
    subject = {"identifier": {"value": str(source.get("PatientID", "") or "unknown")}}
    study = {"type": "ImagingStudy", "identifier": {"system": DICOM_UID, "value": f"urn:oid:{source.StudyInstanceUID}"}}
    observations = [{
        "resourceType": "Observation", "status": "preliminary",
        "code": {"coding": [{"system": CODE_SYSTEM, "code": "priority", "display": "Triage priority"}]},
        "valueCodeableConcept": {"coding": [{"system": CODE_SYSTEM, "code": result.triage["priority"]}],
                                 "text": result.triage["priority"]},
    }]
    for label in LABELS:
        p = result.probabilities.get(label)
        if p is None:
            continue
        code = FINDING_CODES[label]
        observations.append({
            "resourceType": "Observation", "status": "preliminary",
            "code": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "122157",
                                 "display": "Probability"}]},
            "focus": [{"display": code.meaning}],
            "component": [{"code": {"coding": [{"system": SNOMED, "code": code.value, "display": code.meaning}]},
                           "valueQuantity": {"value": round(float(p), 4), "unit": "1", "system": "http://unitsofmeasure.org",
                                             "code": "1"}}],
        })
    entries = []
    for i, obs in enumerate(observations):
        ident = {"system": DICOM_UID, "value": f"urn:oid:{report_id}.{i + 1}"}
        obs.update(identifier=[ident], subject=subject, derivedFrom=[study])
        entries.append({"fullUrl": f"urn:uuid:{report_id}.{i + 1}", "resource": obs,
                        "request": {"method": "POST", "url": "Observation",
                                    "ifNoneExist": f"identifier={ident['system']}|{ident['value']}"}})
    finding = FINDING_CODES[result.label]
    report = {
        "resourceType": "DiagnosticReport", "status": "preliminary",
        "identifier": [{"system": DICOM_UID, "value": f"urn:oid:{report_id}"}],
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}],
        "code": {"coding": [REPORT_CODE]},
        "subject": subject,
        "issued": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "result": [{"reference": e["fullUrl"]} for e in entries],
        "imagingStudy": [study],
        "conclusion": f"AI triage {result.triage['priority']}: {result.label} (not read by a person)",
        "conclusionCode": [{"coding": [{"system": SNOMED, "code": finding.value, "display": finding.meaning}]}],
    }
    entries.append({"fullUrl": f"urn:uuid:{report_id}", "resource": report,
                    "request": {"method": "POST", "url": "DiagnosticReport",
                                "ifNoneExist": f"identifier={DICOM_UID}|urn:oid:{report_id}"}})
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    validate_fhir(bundle)
    return bundle


def validate_fhir(bundle: dict) -> None:
    """Raise (pydantic ``ValidationError``) unless ``bundle`` and every resource in it are valid FHIR R4B:
    required elements, types, formats and no unknown elements (fhir.resources does not check that a code is in
    its value set)."""
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(bundle)


def webhook(source: Dataset, result: Triaged) -> dict:
    """The urgent alert: which study, what was found, how sure, and that no person has read it yet."""
    return {"id": message_id(source, "webhook"), "priority": result.triage["priority"], "finding": result.label,
            "probability": result.probabilities.get(result.label), "reasons": result.triage.get("reasons", []),
            "study_instance_uid": str(source.StudyInstanceUID), "accession_number": str(source.get("AccessionNumber", "")),
            "sent": int(time.time()), "note": "AI triage result, not read by a person"}


def as_text(payload: str | dict) -> str:
    return payload if isinstance(payload, str) else json.dumps(payload)
