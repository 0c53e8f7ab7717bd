"""`cxr` command-line details that need no server."""
from __future__ import annotations

import stat

import pytest

from cxr.admin_key import ENV, AdminKeyError, ensure_key, find_key, key_file_for
from cli.main import COMMANDS
from cli.main import main as cxr
from cli.serve import parser as serve_parser


def test_admin_key_file_is_created_private_and_then_reused(tmp_path):
    path = tmp_path / "sub" / "admin.key"
    key = ensure_key(path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_key(path) == key


def test_serve_restricts_admin_apis_by_default():
    args = serve_parser().parse_args([])
    assert args.no_restrict is False and args.admin_key_file is None  # then: admin.key beside the repository


def test_admin_key_is_found_beside_the_repository_from_any_folder(tmp_path, monkeypatch):
    repository = tmp_path / "build" / "model_repository"
    written = ensure_key(key_file_for(repository))  # where `cxr serve --model-repository` writes it
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.chdir(tmp_path / "build")
    assert key_file_for("model_repository") == tmp_path / "build" / "admin.key"
    assert find_key(repository) == written
    monkeypatch.setenv(ENV, "from-env")
    assert find_key(repository) == "from-env"
    other = tmp_path / "other.key"
    other.write_text("from-flag\n")
    assert find_key(repository, other) == "from-flag"


def test_a_missing_admin_key_is_an_error_naming_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(ENV, raising=False)
    repository = tmp_path / "model_repository"
    with pytest.raises(AdminKeyError, match=f"{ENV} is not set and {tmp_path / 'admin.key'} does not exist"):
        find_key(repository)
    with pytest.raises(AdminKeyError, match="nope.key does not exist"):
        find_key(repository, tmp_path / "nope.key")
    assert cxr(["models", "--repository", str(repository), "rollback", "--url", "localhost:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no admin key:")


def test_serve_on_a_taken_port_says_which_in_one_line(tmp_path, capsys):
    import socket

    from ops.ports import free_port

    (tmp_path / "repo" / "m").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "config.pbtxt").write_text('name: "m"\n')
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        code = cxr(["serve", "--model-repository", str(tmp_path / "repo"), "--no-restrict", "--grpc-port", str(port),
                     "--http-port", str(free_port()), "--metrics-port", str(free_port())])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: grpc port {port} is already in use") and "--grpc-port" in err[0]
    assert cxr(["serve", "--model-repository", str(tmp_path), "--no-restrict"]) == 2
    assert "is not a model repository" in capsys.readouterr().err


def test_cxr_help_lists_every_command_with_a_line(capsys):
    with pytest.raises(SystemExit) as done:
        cxr(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    for name, text in COMMANDS.items():
        assert name in out and text[:40] in " ".join(out.split())  # argparse may wrap the line


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_describes_its_arguments(command, capsys):
    with pytest.raises(SystemExit) as done:
        cxr([command, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith(f"usage: cxr {command}")


def test_an_unknown_command_is_named():
    with pytest.raises(SystemExit) as done:
        cxr(["nonsense"])
    assert done.value.code == 2
