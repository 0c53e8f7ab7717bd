"""Triton's HTTP model-repository API, called with the admin key (:mod:`cxr.admin_key`)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

from cxr.admin_key import ADMIN_HEADER
from cxr.errors import ServerError


class TritonAdmin:
    """Triton's HTTP model-repository API (load with a config override, config, readiness), with the admin key.

    Args:
        http_url: ``HOST:PORT`` of Triton's HTTP endpoint.
        admin_key: the key the restricted APIs need (``None`` when the server restricts nothing).
    """

    def __init__(self, http_url: str, admin_key: str | None = None) -> None:
        self.base = f"http://{http_url}"
        self.headers = {ADMIN_HEADER: admin_key} if admin_key else {}

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float = 600):
        data = json.dumps(body).encode() if body is not None else None
        headers = {**self.headers, "Content-Type": "application/json"} if data is not None else self.headers
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise ServerError(f"{method} {path}: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from None
        return json.loads(raw) if raw else {}

    def model_config(self, name: str) -> dict:
        """The model's config as Triton serves it (JSON)."""
        return self._call("GET", f"/v2/models/{name}/config")

    def load_model(self, name: str, config: dict | None = None) -> None:
        """(Re)load ``name``; returns when it is loaded. Triton skips a load whose files and config are
        unchanged; ``config`` overrides the model's config (e.g. a new ``version_policy``)."""
        body = {"parameters": {"config": json.dumps(config)}} if config is not None else {}
        self._call("POST", f"/v2/repository/models/{name}/load", body)

    def is_model_ready(self, name: str, version: int | None = None) -> bool:
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version is not None else "") + "/ready"
        try:
            self._call("GET", path, timeout=10)
            return True
        except ServerError:
            return False
