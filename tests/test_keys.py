"""Scoped keys in the control database: hashed at rest, verified, scoped, revoked."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragserve.control import FILE_NAME
from ragserve.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from ragserve.keys import GLOBAL, KeyStore, Role, authenticate


def test_a_key_is_stored_hashed_and_verified(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    key, info = store.create("reader", "read", ["A", "B"])
    assert key.startswith("rsk_") and info.collections == ("A", "B")
    principal = store.verify(key)
    assert principal is not None and principal.role is Role.READ
    assert principal.reaches("A") and not principal.reaches("C")
    assert store.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert store.verify("not a key") is None
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob(FILE_NAME + "*"))
    assert key.encode() not in raw and key.split("_")[-1].encode() not in raw
    assert info.id.encode() in raw  # the id is what is stored in the clear


def test_revoked_keys_stop_working_and_are_listed_on_request(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    key, info = store.create("w", Role.WRITE)
    assert [k.id for k in store.list()] == [info.id]
    assert store.revoke(info.id).revoked_at is not None
    assert store.verify(key) is None
    assert store.list() == [] and [k.id for k in store.list(revoked=True)] == [info.id]
    with pytest.raises(NotFound):
        store.revoke("000000000000")


def test_another_process_sees_new_and_revoked_keys(tmp_path: Path) -> None:
    server, cli = KeyStore(tmp_path), KeyStore(tmp_path)
    assert not server.any_active()
    key, info = cli.create("x", "admin")
    server._read_at = -float("inf")  # as after REFRESH_SECONDS
    assert server.verify(key) is not None
    cli.revoke(info.id)
    server._read_at = -float("inf")
    assert server.verify(key) is None


def test_bad_keys_are_refused_with_clear_errors(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    with pytest.raises(InvalidInput, match="unknown role"):
        store.create("x", "root")
    with pytest.raises(InvalidInput, match="invalid collection name"):
        store.create("x", "read", ["a/b"])
    with pytest.raises(InvalidInput, match="at least one"):
        store.create("x", "read", [])


def test_scope_and_role_checks() -> None:
    from ragserve.keys import Principal

    reader = Principal("k", Role.READ, frozenset({"A"}))
    reader.require(Role.READ, "A")
    for role, collection in [(Role.WRITE, "A"), (Role.READ, "B"), (Role.READ, None)]:
        with pytest.raises(Forbidden):
            reader.require(role, collection)
    GLOBAL.require(Role.ADMIN, None)


def test_authenticate_global_scoped_and_open(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    assert authenticate("", [], store) is GLOBAL  # nothing configured: open
    assert authenticate("Bearer g", [b"g"], store) is GLOBAL
    with pytest.raises(Unauthorized, match="missing"):
        authenticate("", [b"g"], store)
    with pytest.raises(Unauthorized, match="invalid"):
        authenticate("Bearer h", [b"g"], store)
    key, _ = store.create("s", "write", ["A"])
    store._read_at = -float("inf")
    assert authenticate(f"Bearer {key}", [], store).role is Role.WRITE
    with pytest.raises(Unauthorized):
        authenticate("Basic abc", [], store)


def test_cli_creates_lists_and_revokes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from ragserve.cli import app

    monkeypatch.setenv("RAGSERVE_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    made = runner.invoke(app, ["keys", "create", "ci", "--role", "write", "-c", "docs"])
    assert made.exit_code == 0, made.output
    key = next(line for line in made.stdout.splitlines() if line.startswith("rsk_"))
    principal = KeyStore(tmp_path).verify(key)
    assert principal is not None and principal.role is Role.WRITE
    listed = runner.invoke(app, ["keys", "list", "--json"])
    assert principal.key_id in listed.stdout and key not in listed.stdout
    assert runner.invoke(app, ["keys", "revoke", principal.key_id]).exit_code == 0
    assert KeyStore(tmp_path).verify(key) is None
    assert runner.invoke(app, ["keys", "revoke", "nope"]).exit_code == 1
    assert runner.invoke(app, ["keys", "create", "x", "--role", "root"]).exit_code == 2
