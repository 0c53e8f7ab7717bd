"""Reload a model whose python-backend stub process died (Triton 2.51 no longer does: server #7862, #8604)."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import psutil

from cxr.errors import ServerError

STUB_BINARY = "triton_python_backend_stub"  # one process per python-model instance


def stub_instance(argv: list[str]) -> tuple[str, str] | None:
    """``(instance, model)`` of a python-backend stub from its command line, or None for another process.

    A stub's first argument is ``<repository>/<model>/<version>/model.py``; its second-to-last, the instance name.
    """
    if not argv or not argv[0].endswith(STUB_BINARY) or len(argv) < 3:
        return None
    return argv[-2], Path(argv[1]).parent.parent.name


class StubWatchdog:
    """Reload a model when one of its python-backend stub processes has died (killed, OOM, crashed).

    After the server is ready it records every stub (one per model instance, named ``<model>_<i>_<j>``
    on the stub's command line); then every ``interval_s`` it checks them. A missing or zombie stub makes
    it reload that model (:meth:`TritonAdmin.load_model`); in-flight requests on the other instances
    finish, requests that hit the dead instance until then fail fast and are retried by clients
    (:class:`client.grpc_client.TriageClient` retries them). ``restarts`` lists ``(model, seconds to
    ready again)``.
    """

    def __init__(self, server, interval_s: float = 0.5) -> None:
        """``server``: the :class:`ops.server.TritonServer` to watch (its ``process`` and ``admin``)."""
        self.server, self.interval_s = server, interval_s
        self.restarts: list[tuple[str, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._expected: dict[str, str] = {}  # instance name -> model name

    def stubs(self) -> dict[str, tuple[str, int]]:
        """Live stubs of this server: instance name -> (model name, pid). Dead ones are absent: Triton never
        reaps a killed stub, and a zombie's command line cannot be read."""
        found = {}
        try:
            children = psutil.Process(self.server.process.pid).children()
        except (psutil.NoSuchProcess, AttributeError):
            return found
        for child in children:
            try:
                argv = child.cmdline()
                if child.status() == psutil.STATUS_ZOMBIE:
                    continue
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            stub = stub_instance(argv)
            if stub is not None:
                found[stub[0]] = (stub[1], child.pid)
        return found

    def start(self) -> None:
        self._expected = {name: model for name, (model, _) in self.stubs().items()}
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cxr-stub-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def dead_models(self) -> set[str]:
        alive = self.stubs()
        return {model for name, model in self._expected.items() if name not in alive}

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.server.process is None or self.server.process.poll() is not None:
                return
            for model in sorted(self.dead_models()):
                start = time.monotonic()
                print(f"[cxr] stub watchdog: a {model} stub process died; reloading {model}", file=sys.stderr, flush=True)
                try:
                    # Triton skips a load with an unchanged config: a restart counter parameter changes it
                    admin = self.server.admin
                    config = admin.model_config(model)
                    config.setdefault("parameters", {})["cxr_stub_restart"] = {"string_value": str(len(self.restarts) + 1)}
                    admin.load_model(model, config=config)
                except (OSError, ServerError) as exc:
                    print(f"[cxr] stub watchdog: reloading {model} failed: {exc}", file=sys.stderr, flush=True)
                    continue
                self.restarts.append((model, time.monotonic() - start))
                print(f"[cxr] stub watchdog: {model} ready again after {time.monotonic() - start:.1f} s",
                      file=sys.stderr, flush=True)
