"""``cxr classify`` streams: files are read a bounded window ahead of the answers and each answer prints as it
comes, so a folder of thousands of files runs in flat memory and the first result appears before the last read."""
from __future__ import annotations

import io
import json
import threading
import time

from client import classify, grpc_client
from client.grpc_client import TriageClient, TriageOutput


class FakeServer(TriageClient):
    """A TriageClient whose inference is a short sleep (no server): only the client's streaming is under test."""

    def __init__(self) -> None:
        self.retries, self.backoff_s, self.shm = 0, 0.0, None

    def is_ready(self) -> bool:
        return True

    def _infer(self, data: bytes, name: str, request_id: str, priority: int) -> TriageOutput:
        time.sleep(0.002)
        if data.startswith(b"bad"):
            return TriageOutput(name, error="bad image: not a frontal chest radiograph", request_id=request_id)
        return TriageOutput(name, label="normal", probabilities={"normal": 0.9}, triage={"priority": "routine"},
                            lung_fraction=0.3, request_id=request_id)


class Reads:
    """Counts files read and results written, and the most files ever read but not yet answered."""

    def __init__(self) -> None:
        self.read = self.written = self.most_ahead = 0
        self.read_when_first_written: int | None = None
        self.lock = threading.Lock()

    def on_read(self, path):
        with self.lock:
            self.read += 1
            self.most_ahead = max(self.most_ahead, self.read - self.written)
        return path.read_bytes()


class Out(io.StringIO):
    def __init__(self, reads: Reads) -> None:
        super().__init__()
        self.reads = reads

    def write(self, text: str) -> int:
        if text.startswith("{"):
            with self.reads.lock:
                self.reads.written += 1
                if self.reads.read_when_first_written is None:
                    self.reads.read_when_first_written = self.reads.read
        return super().write(text)


def test_500_files_stream_in_a_bounded_window(tmp_path, monkeypatch):
    for i in range(500):
        (tmp_path / f"{i:03d}.png").write_bytes((b"bad" if i % 100 == 7 else b"ok") + bytes(1000))
    reads = Reads()
    monkeypatch.setattr(grpc_client, "read_file", reads.on_read)
    out = Out(reads)
    code = classify.run([str(tmp_path)], "fake:0", as_json=True, concurrency=8, out=out, client=FakeServer())
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert code == 1 and len(lines) == 500 and reads.read == 500
    assert sum("error" in line for line in lines) == 5
    assert reads.read_when_first_written < 500  # the first answer printed long before the last file was read
    assert reads.most_ahead <= 2 * 8  # never more than the window (2 x concurrency) read and unanswered


def test_summary_counts_priorities_and_rejections(capsys, tmp_path):
    (tmp_path / "a.png").write_bytes(b"ok")
    (tmp_path / "b.png").write_bytes(b"bad")
    out = io.StringIO()
    assert classify.run([str(tmp_path)], "fake:0", as_json=False, out=out, client=FakeServer()) == 1
    text = out.getvalue().splitlines()
    assert text[0].split()[:3] == ["file", "priority", "finding"]
    assert any(line.startswith("b.png  ERROR  bad image") for line in text)
    assert text[-1].startswith("2 files in") and text[-1].endswith("1 triaged (routine 1), 1 rejected")


def test_an_unreadable_file_is_that_files_error(tmp_path):
    missing = tmp_path / "gone.dcm"
    (result,) = FakeServer().triage_many([("gone.dcm", missing)])
    assert result.error.startswith("cannot read file")
