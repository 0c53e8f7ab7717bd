"""Where a server's admin key lives, and how commands find it.

``cxr serve --model-repository R`` writes the key (random, mode 600) to ``admin.key`` beside ``R`` (for
``build/model_repository``: ``build/admin.key``) unless ``--admin-key-file`` names another file. Commands that
call the restricted APIs (``cxr models promote|rollback|shadow``) find it in this order: their
``--admin-key-file`` flag, the ``CXR_ADMIN_KEY`` environment variable (the key itself), the file beside the
repository. They never fall back to sending no key: a missing key is an error that says where it looked.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from cxr.errors import CxrError

ENV = "CXR_ADMIN_KEY"
FILE_NAME = "admin.key"
ADMIN_HEADER = "cxr-admin-key"  # the HTTP header; Triton expects it on gRPC with the prefix below
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
RESTRICTED = ("model-repository", "shared-memory", "logging", "trace")  # the APIs the key unlocks


class AdminKeyError(CxrError):
    """No admin key where the command looked."""


def key_file_for(repository: str | Path) -> Path:
    """The file ``cxr serve`` writes the key to for ``repository`` (absolute, so the working folder does not matter)."""
    return Path(repository).resolve().parent / FILE_NAME


def ensure_key(path: str | Path) -> str:
    """The key in ``path``, created (random, mode 600) if the file does not exist."""
    file = Path(path)
    if not file.exists():
        file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16) + "\n")
    return file.read_text().strip()


def key_from_env() -> str | None:
    """The key in ``CXR_ADMIN_KEY``, or None when it is unset or blank."""
    return os.environ.get(ENV, "").strip() or None


def find_key(repository: str | Path, key_file: str | Path | None = None) -> str:
    """The admin key for the server on ``repository`` (see the module docstring for the order).

    Raises:
        AdminKeyError: no flag file, no ``CXR_ADMIN_KEY``, no key file beside the repository.
    """
    if key_file is not None:
        path = Path(key_file)
        if not path.is_file():
            raise AdminKeyError(f"admin key file {path.resolve()} does not exist")
        return path.read_text().strip()
    if (key := key_from_env()) is not None:
        return key
    path = key_file_for(repository)
    if path.is_file():
        return path.read_text().strip()
    raise AdminKeyError(f"no admin key: {ENV} is not set and {path} does not exist (`cxr serve --model-repository "
                        f"{repository}` writes it there; or pass --admin-key-file)")
