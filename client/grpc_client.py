"""gRPC client for the ``cxr_triage`` ensemble (tritonclient), as a PACS integration calls it.

Stock tritonclient users can do the same by hand: send the encoded file as one ``BYTES`` element of
``image_bytes`` (shape ``[1, 1]``) and read the outputs listed in :data:`cxr.specs.ENSEMBLE_OUTPUTS`.
"""
from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from cxr.admin_key import GRPC_ADMIN_HEADER
from cxr.labels import reported_probabilities
from cxr.pixels import MAX_BYTES, ImageError, check_encoded_size
from cxr.specs import ENSEMBLE_NAME, IMAGE_BYTES, LABEL, LUNG_FRACTION, PROBABILITIES, TRIAGE

DEFAULT_OUTPUTS = tuple(t.name for t in (LABEL, TRIAGE, LUNG_FRACTION, PROBABILITIES))
MAX_MESSAGE_BYTES = MAX_BYTES + 2**20  # the largest image the server accepts, plus the rest of the message
# Errors worth retrying: the server is unreachable or restarting, a model instance's stub died and is being
# reloaded (ops.watchdog.StubWatchdog), or a load balancer in front lost the replica that had the request (HTTP
# 502/503 instead of a gRPC status). Inference is a pure function of the image, so a retry is safe.
TRANSIENT = ("UNAVAILABLE", "failed to connect", "Socket closed", "Connection refused", "Connection reset",
             "is not healthy", "is not ready", "Request for unknown model", "http2 header with status: 502",
             "http2 header with status: 503")
_ENSEMBLE_PREFIX = re.compile(r"^in ensemble '[^']*', ")


def read_file(path: Path) -> bytes:
    """One input file's bytes (the one place the client reads them: tests count reads here)."""
    return path.read_bytes()


def is_transient(error: str) -> bool:
    """Whether a failed request may succeed if sent again (never true for a rejected image)."""
    return not error.startswith("bad image") and any(t in error for t in TRANSIENT)


@dataclass
class TriageOutput:
    """One image's answer: either a result or ``error``."""

    name: str
    label: str | None = None
    probabilities: dict[str, float | None] = field(default_factory=dict)  # None: untrained label
    triage: dict = field(default_factory=dict)
    lung_fraction: float | None = None
    latency_ms: float = 0.0
    request_id: str = ""
    error: str | None = None
    attempts: int = 1
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        """The ``cxr classify --json`` line."""
        if self.error is not None:
            return {"file": self.name, "error": self.error}
        return {
            "file": self.name,
            "label": self.label,
            "probabilities": self.probabilities,
            "triage": {k: v for k, v in self.triage.items() if k != "model_versions"},
            "lung_fraction": self.lung_fraction,
            "model_versions": self.triage.get("model_versions", {}),
            "latency_ms": round(self.latency_ms, 2),
        }


class SystemSharedMemory:
    """Request inputs through POSIX shared memory instead of the gRPC message (client on the server's host).

    Each client thread gets its own region (regrown when an image is larger), registered with Triton once
    and unregistered by :meth:`close`. Outputs still come back in the gRPC response.
    """

    def __init__(self, client: grpcclient.InferenceServerClient, min_bytes: int = 1 << 20,
                 headers: dict[str, str] | None = None) -> None:
        self.client, self.min_bytes, self.headers = client, min_bytes, headers
        self._local = threading.local()
        self._lock = threading.Lock()
        self._regions: list[tuple[str, object]] = []

    def put(self, inp: grpcclient.InferInput, data: bytes) -> None:
        """Write ``data`` as the one BYTES element of ``inp`` into this thread's region."""
        import tritonclient.utils.shared_memory as shm

        serialized = serialize_byte_tensor(np.array([[data]], dtype=np.object_))  # 0-d object array: the bytes
        size = len(serialized.item())
        region = getattr(self._local, "region", None)
        if region is None or region[2] < size:
            if region is not None:
                self._drop(region[0], region[1])
            capacity = max(self.min_bytes, 1 << (size - 1).bit_length())
            name = f"cxr-{uuid.uuid4().hex[:16]}"
            handle = shm.create_shared_memory_region(name, f"/{name}", capacity)
            self.client.register_system_shared_memory(name, f"/{name}", capacity, headers=self.headers)
            with self._lock:
                self._regions.append((name, handle))
            region = self._local.region = (name, handle, capacity)
        shm.set_shared_memory_region(region[1], [serialized])
        inp.set_shared_memory(region[0], size)

    def _drop(self, name: str, handle) -> None:
        import tritonclient.utils.shared_memory as shm

        try:
            self.client.unregister_system_shared_memory(name, headers=self.headers)
        except InferenceServerException:
            pass  # the server is gone; the region is still ours to destroy
        shm.destroy_shared_memory_region(handle)
        with self._lock:
            self._regions = [r for r in self._regions if r[0] != name]

    def close(self) -> None:
        for name, handle in list(self._regions):
            self._drop(name, handle)


class TriageClient:
    """Send encoded images (DICOM/PNG/JPEG bytes) to ``cxr_triage`` over gRPC.

    Args:
        url: ``HOST:PORT`` of Triton's gRPC endpoint.
        model: ensemble name.
        timeout_s: per-request client timeout.
        outputs: which ensemble outputs to fetch (add ``cam``/``lung_mask`` for maps).
        shared_memory: ``"system"`` sends the images through POSIX shared memory (only when the client runs
            on the server's host); ``None`` sends them in the gRPC message.
        admin_key: the server's admin key (``cxr serve`` writes it to ``--admin-key-file``); needed for
            shared memory, which the server restricts.
        tls: ``{"root_certificates", "private_key", "certificate_chain"}`` PEM file paths for a TLS server
            (the last two for mutual TLS); ``None`` for plain gRPC.
        retries: how many times a request that failed for a transient reason (:func:`is_transient`) is
            sent again, after ``backoff_s``, then doubling (5 retries with 0.25 s wait out ~8 s).
    """

    def __init__(self, url: str = "localhost:8001", model: str = ENSEMBLE_NAME, timeout_s: float = 60.0,
                 outputs: tuple[str, ...] = DEFAULT_OUTPUTS, shared_memory: str | None = None,
                 admin_key: str | None = None, tls: dict[str, str] | None = None, retries: int = 5,
                 backoff_s: float = 0.25) -> None:
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES), ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        self.client = grpcclient.InferenceServerClient(url=url, channel_args=options, ssl=tls is not None, **(tls or {}))
        self.admin_headers = {GRPC_ADMIN_HEADER: admin_key} if admin_key else None
        self.model, self.timeout_s, self.outputs = model, timeout_s, tuple(outputs)
        self.retries, self.backoff_s = retries, backoff_s
        if shared_memory not in (None, "system"):
            raise ValueError(f"shared_memory must be None or 'system', got {shared_memory!r}")
        self.shm = SystemSharedMemory(self.client, headers=self.admin_headers) if shared_memory == "system" else None

    def is_ready(self) -> bool:
        try:
            return self.client.is_server_ready() and self.client.is_model_ready(self.model)
        except InferenceServerException:
            return False

    def triage(self, data: bytes, name: str = "image", request_id: str | None = None, priority: int = 0) -> TriageOutput:
        """Triage one encoded image; server-side rejections come back as ``TriageOutput.error``.

        ``priority``: 0 = the models' default, 1 = urgent (served before queued default-priority requests).
        Transient failures are retried (``retries``, with backoff); ``attempts`` says how many were made.
        """
        request_id = request_id or uuid.uuid4().hex
        try:
            check_encoded_size(len(data))  # the server would refuse it too, after a long upload
        except ImageError as exc:
            return TriageOutput(name, error=f"bad image: {exc}", request_id=request_id)
        attempt = 1
        while True:
            out = self._infer(data, name, request_id, priority)
            out.attempts = attempt
            if out.error is None or attempt > self.retries or not is_transient(out.error):
                return out
            time.sleep(self.backoff_s * 2 ** (attempt - 1))
            attempt += 1

    def _infer(self, data: bytes, name: str, request_id: str, priority: int) -> TriageOutput:
        inp = grpcclient.InferInput(IMAGE_BYTES.name, [1, 1], "BYTES")
        if self.shm is not None:
            self.shm.put(inp, data)
        else:
            inp.set_data_from_numpy(np.array([[data]], dtype=object))
        outputs = [grpcclient.InferRequestedOutput(n) for n in self.outputs]
        start = time.perf_counter()
        try:
            result = self.client.infer(self.model, [inp], outputs=outputs, request_id=request_id,
                                       client_timeout=self.timeout_s, priority=priority)
        except InferenceServerException as exc:
            error = _ENSEMBLE_PREFIX.sub("", exc.message() or str(exc))  # "in ensemble 'cxr_triage', bad image: ..."
            return TriageOutput(name, error=error, request_id=request_id, latency_ms=(time.perf_counter() - start) * 1e3)
        latency = (time.perf_counter() - start) * 1e3
        return _parse(name, result, self.outputs, latency, request_id)

    def triage_many(self, items: Iterable[tuple[str, bytes | Path]], concurrency: int = 8, window: int | None = None,
                    ordered: bool = True) -> Iterator[TriageOutput]:
        """Triage ``(name, bytes or file path)`` pairs with ``concurrency`` requests in flight.

        ``items`` is consumed lazily: at most ``window`` (default ``2 * concurrency``) images are read and not
        yet yielded at any time, so a folder of thousands of files streams in bounded memory. A path is read in
        the worker thread; one that cannot be read comes back as that item's ``error``. Results come in input
        order (``ordered``) or as they complete.
        """
        window = max(window or 2 * concurrency, concurrency)
        items = iter(items)
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            pending: deque[Future] = deque(pool.submit(self._triage_item, *item) for item in islice(items, window))
            while pending:
                if ordered:
                    done = pending.popleft()
                else:
                    done = next(iter(wait(pending, return_when=FIRST_COMPLETED).done))
                    pending.remove(done)
                yield done.result()
                for item in islice(items, 1):
                    pending.append(pool.submit(self._triage_item, *item))

    def _triage_item(self, name: str, data: bytes | Path) -> TriageOutput:
        if isinstance(data, Path):
            try:
                data = read_file(data)
            except OSError as exc:
                return TriageOutput(name, error=f"cannot read file: {exc.strerror or exc}")
        return self.triage(data, name)

    def close(self) -> None:
        if self.shm is not None:
            self.shm.close()
        self.client.close()


def _parse(name: str, result, outputs: tuple[str, ...], latency_ms: float, request_id: str) -> TriageOutput:
    arrays = {n: result.as_numpy(n) for n in outputs}
    out = TriageOutput(name, latency_ms=latency_ms, request_id=request_id, arrays=arrays)
    if LABEL.name in arrays:
        out.label = _text(arrays[LABEL.name])
    if TRIAGE.name in arrays:
        out.triage = json.loads(_text(arrays[TRIAGE.name]))
    if LUNG_FRACTION.name in arrays:
        out.lung_fraction = round(float(arrays[LUNG_FRACTION.name].reshape(-1)[0]), 4)
    if PROBABILITIES.name in arrays:
        out.probabilities = reported_probabilities(arrays[PROBABILITIES.name].reshape(-1))
    return out


def _text(array: np.ndarray) -> str:
    value = array.reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else str(value)
