"""``comfykernel users add | list | passwd | remove | token | tokens | revoke``.

Accounts live in ``<user dir>/auth.json`` (``credentials.py``), keyed by the userdata user id; a
running server picks changes up on its next request. Secrets are read from the terminal (asked
twice) or, with ``--password-stdin``, from the first line of standard input; they are never
taken from the command line, where other local users could read them.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from kernel.settings import Settings
from plugins.auth import secrets_hash
from plugins.auth.credentials import (
    CREDENTIALS_FILE,
    Account,
    CredentialsError,
    Token,
    now,
    read_accounts,
    write_accounts,
)
from plugins.userdata import api as userdata

MIN_PASSWORD = 8


class CommandError(Exception):
    """A refusal printed as ``comfykernel users: error: ...`` with exit code 1."""


def register(subparsers: Any) -> None:
    users = subparsers.add_parser("users", help="manage the accounts of --auth password / proxy")
    users.add_argument("--base-directory", default=None, help="as for `comfykernel run`")
    users.add_argument("--user-directory", default=None, help="as for `comfykernel run`")
    sub = users.add_subparsers(dest="users_command", metavar="COMMAND")
    users.set_defaults(func=lambda args: _usage(users))

    add = sub.add_parser("add", help="create an account (asks for its password)")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="may see and manage every user's prompts")
    secret = add.add_mutually_exclusive_group()
    secret.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    secret.add_argument(
        "--no-password", action="store_true", help="no password login (a proxy-mode user, or tokens only)"
    )
    add.set_defaults(func=_run(cmd_add))

    lst = sub.add_parser("list", help="the accounts")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_run(cmd_list))

    passwd = sub.add_parser("passwd", help="set a new password (ends the user's sessions)")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true")
    passwd.set_defaults(func=_run(cmd_passwd))

    remove = sub.add_parser("remove", help="delete an account and its tokens (its files stay)")
    remove.add_argument("name")
    remove.set_defaults(func=_run(cmd_remove))

    token = sub.add_parser("token", help="create an API token for NAME, printed once")
    token.add_argument("name")
    token.add_argument("--label", default="", help="a note to tell tokens apart")
    token.set_defaults(func=_run(cmd_token))

    tokens = sub.add_parser("tokens", help="list a user's API tokens (ids, never the secrets)")
    tokens.add_argument("name")
    tokens.set_defaults(func=_run(cmd_tokens))

    revoke = sub.add_parser("revoke", help="revoke an API token of NAME (or --all)")
    revoke.add_argument("name")
    revoke.add_argument("token_id", nargs="?")
    revoke.add_argument("--all", action="store_true")
    revoke.set_defaults(func=_run(cmd_revoke))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _run(command: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(command(args, _user_path(args)) or 0)
        except (CommandError, CredentialsError, ValueError) as exc:
            print(f"comfykernel users: error: {exc}", file=sys.stderr)
            return 1

    return run


def _user_path(args: argparse.Namespace) -> Path:
    settings = Settings(base_directory=args.base_directory or ".", user_directory=args.user_directory)
    return settings.user_path


def _load(user_path: Path) -> dict[str, Account]:
    return read_accounts(user_path / CREDENTIALS_FILE)


def _save(user_path: Path, accounts: dict[str, Account]) -> None:
    write_accounts(user_path / CREDENTIALS_FILE, accounts)


def _find(accounts: dict[str, Account], name: str) -> tuple[str, Account]:
    for user_id, account in accounts.items():
        if account.name == name:
            return user_id, account
    raise CommandError(f"no account named {name!r}")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CommandError("the passwords differ")
    if len(password) < MIN_PASSWORD:
        raise CommandError(f"a password needs at least {MIN_PASSWORD} characters")
    return password


def cmd_add(args: argparse.Namespace, user_path: Path) -> int:
    accounts = _load(user_path)
    name = args.name.strip()
    if any(acc.name == name for acc in accounts.values()):
        raise CommandError(f"an account named {name!r} exists")
    password = None if args.no_password else _read_password(args.password_stdin)
    try:
        # The userdata user of that name if there is one (its files stay), else a new one.
        user_id = userdata.ensure_user(user_path, name)
    except userdata.BadUsername as exc:
        raise CommandError(str(exc)) from None
    accounts = _load(user_path)  # the password prompt may have taken a while
    accounts[user_id] = Account(
        name=name,
        admin=args.admin,
        password=secrets_hash.hash_secret(password) if password is not None else None,
    )
    _save(user_path, accounts)
    print(f"created {'admin ' if args.admin else ''}account {name} ({user_id})")
    return 0


def cmd_list(args: argparse.Namespace, user_path: Path) -> int:
    accounts = _load(user_path)
    rows = [
        {
            "id": user_id,
            "name": acc.name,
            "admin": acc.admin,
            "password": acc.password is not None,
            "tokens": len(acc.tokens),
        }
        for user_id, acc in sorted(accounts.items(), key=lambda item: item[1].name)
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        flags = ", ".join(
            f for f, on in (("admin", row["admin"]), ("no password", not row["password"])) if on
        )
        print(
            f"{row['name']:<24} {row['id']:<50} tokens: {row['tokens']}" + (f"  ({flags})" if flags else "")
        )
    return 0


def cmd_passwd(args: argparse.Namespace, user_path: Path) -> int:
    _find(_load(user_path), args.name)  # fail before asking
    password = _read_password(args.password_stdin)
    accounts = _load(user_path)
    user_id, account = _find(accounts, args.name)
    account.password = secrets_hash.hash_secret(password)
    account.generation += 1  # every open session of this user ends
    _save(user_path, accounts)
    print(f"password of {args.name} changed; its sessions ended")
    return 0


def cmd_remove(args: argparse.Namespace, user_path: Path) -> int:
    accounts = _load(user_path)
    user_id, _ = _find(accounts, args.name)
    del accounts[user_id]
    _save(user_path, accounts)
    print(f"removed account {args.name}; its files under {user_id}/ were kept")
    return 0


def cmd_token(args: argparse.Namespace, user_path: Path) -> int:
    accounts = _load(user_path)
    _, account = _find(accounts, args.name)
    token_id, secret, token = secrets_hash.new_token()
    account.tokens[token_id] = Token(secrets_hash.hash_secret(secret), now(), args.label)
    _save(user_path, accounts)
    print(
        f"token {token_id} for {args.name} (shown once; revoke with `comfykernel users revoke`):",
        file=sys.stderr,
    )
    print(token)
    return 0


def cmd_tokens(args: argparse.Namespace, user_path: Path) -> int:
    _, account = _find(_load(user_path), args.name)
    for token_id, tok in sorted(account.tokens.items(), key=lambda item: item[1].created):
        print(f"{token_id}  created {tok.created}  {tok.label}")
    return 0


def cmd_revoke(args: argparse.Namespace, user_path: Path) -> int:
    accounts = _load(user_path)
    _, account = _find(accounts, args.name)
    if args.all:
        gone = list(account.tokens)
    elif args.token_id:
        if args.token_id not in account.tokens:
            raise CommandError(f"{args.name} has no token {args.token_id}")
        gone = [args.token_id]
    else:
        raise CommandError("name a token id, or --all")
    for token_id in gone:
        del account.tokens[token_id]
    _save(user_path, accounts)
    print(f"revoked {len(gone)} token(s) of {args.name}")
    return 0
