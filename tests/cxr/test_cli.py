"""`cxr` command-line details that need no server."""
from __future__ import annotations

import stat

from cxr.cli import _admin_key, build_parser


def test_admin_key_file_is_created_private_and_then_reused(tmp_path):
    path = tmp_path / "sub" / "admin.key"
    key = _admin_key(str(path))
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _admin_key(str(path)) == key


def test_serve_restricts_admin_apis_by_default():
    args = build_parser().parse_args(["serve"])
    assert args.no_restrict is False and args.admin_key_file == "build/admin.key"
