"""``comfykernel users``: accounts are userdata users, secrets are stored as scrypt hashes only."""

from __future__ import annotations

import json
import stat

from tests.plugins.auth.helpers import PASSWORD, add_user, cli, new_token


def _auth(tmp_path):
    return json.loads((tmp_path / "user" / "auth.json").read_text())


def test_add_list_and_remove(tmp_path):
    add_user(tmp_path, "alice", admin=True)
    add_user(tmp_path, "bob")
    users = json.loads((tmp_path / "user" / "users.json").read_text())
    ids = {name: uid for uid, name in users.items()}
    assert set(ids) == {"alice", "bob"} and ids["alice"].startswith("alice_")
    stored = _auth(tmp_path)["users"]
    assert set(stored) == set(users.keys())
    assert stored[ids["alice"]]["admin"] is True and stored[ids["bob"]]["admin"] is False
    raw = (tmp_path / "user" / "auth.json").read_text()
    assert PASSWORD not in raw and stored[ids["bob"]]["password"].startswith("scrypt$")
    assert stat.S_IMODE((tmp_path / "user" / "auth.json").stat().st_mode) == 0o600

    code, out, _ = cli(tmp_path, "list", "--json")
    assert code == 0
    assert [(r["name"], r["admin"], r["tokens"]) for r in json.loads(out)] == [
        ("alice", True, 0),
        ("bob", False, 0),
    ]
    assert cli(tmp_path, "add", "bob", "--password-stdin", stdin=PASSWORD + "\n")[0] == 1  # exists
    assert cli(tmp_path, "remove", "bob")[0] == 0
    assert set(_auth(tmp_path)["users"]) == {ids["alice"]}
    # The userdata user (and its files) stay; adding the name again reuses that id.
    add_user(tmp_path, "bob")
    assert ids["bob"] in _auth(tmp_path)["users"]


def test_refusals(tmp_path):
    code, _, err = cli(tmp_path, "add", "carol", "--password-stdin", stdin="short\n")
    assert code == 1 and "at least 8" in err
    code, _, err = cli(tmp_path, "add", "__system", "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 1 and "System User prefix" in err
    assert cli(tmp_path, "passwd", "nobody", "--password-stdin", stdin=PASSWORD + "\n")[0] == 1
    assert cli(tmp_path, "token", "nobody")[0] == 1
    add_user(tmp_path, "carol")
    assert cli(tmp_path, "revoke", "carol", "ffff")[0] == 1
    assert cli(tmp_path, "revoke", "carol")[0] == 1


def test_tokens_are_printed_once_and_stored_hashed(tmp_path):
    add_user(tmp_path, "alice")
    token = new_token(tmp_path, "alice")
    assert token.startswith("ckt_")
    token_id, secret = token.split("_", 2)[1:]
    entry = next(iter(_auth(tmp_path)["users"].values()))
    assert list(entry["tokens"]) == [token_id] and secret not in json.dumps(entry)
    code, out, _ = cli(tmp_path, "tokens", "alice")
    assert code == 0 and token_id in out and secret not in out
    new_token(tmp_path, "alice")
    assert cli(tmp_path, "revoke", "alice", "--all")[0] == 0
    assert next(iter(_auth(tmp_path)["users"].values()))["tokens"] == {}


def test_passwd_raises_the_generation(tmp_path):
    add_user(tmp_path, "alice")
    before = next(iter(_auth(tmp_path)["users"].values()))
    assert cli(tmp_path, "passwd", "alice", "--password-stdin", stdin="another password\n")[0] == 0
    after = next(iter(_auth(tmp_path)["users"].values()))
    assert after["generation"] == before["generation"] + 1 and after["password"] != before["password"]
