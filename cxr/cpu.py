"""What CPU this is: model name and the instruction sets that decide how ONNX Runtime's INT8 kernels compute.

Every speed figure names the CPU it was measured on, and an INT8 repository records the CPU its answers were
checked on (``build.json``); ``cxr serve`` compares that record with the host it starts on
(:func:`int8_host_note`).

ISA classes, from what matters to integer convolutions: ``avx512-vnni`` (VPDPBUSD, 32-bit accumulation),
``avx-vnni`` (the same in 256 bits), ``avx2`` (VPMADDUBSW: pairs of u8 x s8 products are summed into a
*saturating 16-bit* lane, so full-range int8 weights can overflow), ``x86-64`` (older), or the machine name
elsewhere (e.g. ``aarch64``).
"""
from __future__ import annotations

import platform
from pathlib import Path

FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def isa_class(flags: set[str], machine: str = "x86_64") -> str:
    """The INT8-relevant class of a CPU with these ``/proc/cpuinfo`` flags."""
    if machine not in ("x86_64", "AMD64"):
        return machine
    if "avx512_vnni" in flags:
        return "avx512-vnni"
    if "avx_vnni" in flags:
        return "avx-vnni"
    if "avx2" in flags:
        return "avx2"
    return "x86-64"


def describe_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """``{"model", "vendor", "isa", "flags"}`` of this host (``flags``: those of :data:`FLAGS_OF_INTEREST`)."""
    fields: dict[str, str] = {}
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() not in fields:  # the first processor's entry
                fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    machine = platform.machine()
    return {
        "model": fields.get("model name", platform.processor() or machine),
        "vendor": fields.get("vendor_id", ""),
        "isa": isa_class(flags, machine),
        "flags": [f for f in FLAGS_OF_INTEREST if f in flags],
    }


def cpu_line(cpu: dict) -> str:
    """How a benchmark names the CPU of its figures (one :func:`describe_cpu` result)."""
    return f"CPU: {cpu['model']} ({cpu['vendor']}), ISA class {cpu['isa']}, flags {' '.join(cpu['flags'])}"


def int8_host_note(record: dict | None, host: dict) -> tuple[bool, str]:
    """Compare an INT8 repository's build record (``build.json["int8"]``) with this ``host``.

    Returns ``(same_isa, message)``. ``same_isa`` is False when the record is missing or was checked on another
    ISA class: the graphs' format is meant to give the same answers everywhere (see :mod:`export.quantize`),
    but this host's answers were then not checked.
    """
    if not record or "host" not in record:
        return False, ("INT8 repository without a host record (built before the check existed): its answers "
                       f"were never checked against FP32 on any CPU; rebuild it on this host ({host['isa']}).")
    built = record["host"]
    agreement = record.get("agreement", {})
    summary = ", ".join(f"{k} {v:.4f}" for k, v in agreement.items() if isinstance(v, float))
    if built["isa"] == host["isa"]:
        return True, (f"INT8 answers were checked on {built['model']} ({built['isa']}), the same ISA class as this "
                      f"host ({host['model']}): {summary}")
    return False, (f"INT8 answers were checked on {built['model']} ({built['isa']}); this host is {host['model']} "
                   f"({host['isa']}) and was not checked. Format: {record.get('format', 'unknown')}. Rebuild with "
                   "`python -m export.build_repository --profile cpu-int8` here to check (it refuses a CPU that "
                   "cannot hold the agreement bounds).")
