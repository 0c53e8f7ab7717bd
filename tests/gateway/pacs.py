"""A real Orthanc PACS (Debian package) on loopback for the gateway tests, driven over its REST API."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from ops.ports import free_port

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Orthanc:
    """Orthanc with its own storage under ``workdir``, knowing the gateway as modality ``gateway``.

    The config is the one the README's "Connect your PACS" section shows.
    """

    def __init__(self, workdir: Path, gateway_aet: str, gateway_port: int, aet: str = "ORTHANC") -> None:
        if shutil.which("Orthanc") is None:
            raise RuntimeError("Orthanc is not installed (make setup installs the Debian package)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.aet, self.http_port, self.dicom_port = aet, free_port(), free_port()
        self.config = {
            "Name": "cxr-triage-test",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {"gateway": [gateway_aet, "127.0.0.1", gateway_port]},
            "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},  # Debian orthanc-dicomweb: STOW/QIDO/WADO-RS
        }
        self.config_path = workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self.log = (workdir / "orthanc.log").open("wb")
        self.process = subprocess.Popen(["Orthanc", str(self.config_path)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get("/system")
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not start; see {workdir / 'orthanc.log'}")
                time.sleep(0.2)

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method,
                                     headers={"Content-Type": content_type})
        with urllib.request.urlopen(req, timeout=120) as response:
            raw = response.read()
        return json.loads(raw) if response.headers.get_content_type() == "application/json" else raw

    @property
    def dicomweb(self) -> str:
        """The DICOMweb base URL (the orthanc-dicomweb plugin)."""
        if not DICOMWEB_PLUGIN.exists():
            raise RuntimeError("orthanc-dicomweb is not installed (make setup installs the Debian package)")
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def get(self, path: str):
        return self.request("GET", path)

    def upload(self, data: bytes) -> str:
        """Store a DICOM file; its Orthanc instance id."""
        return self.request("POST", "/instances", data, "application/dicom")["ID"]

    def send_to_gateway(self, instance_id: str) -> dict:
        """Orthanc's own C-STORE SCU sends the instance to the gateway (``POST /modalities/gateway/store``)."""
        return self.request("POST", "/modalities/gateway/store", json.dumps({"Resources": [instance_id]}).encode())

    def instances(self) -> list[str]:
        return self.get("/instances")

    def file(self, instance_id: str) -> bytes:
        return self.request("GET", f"/instances/{instance_id}/file")

    def wait_for(self, count: int, timeout_s: float = 180.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.instances()
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
