"""The plugin's command-line flags and their checked form (``AuthOptions``)."""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kernel import StartupError

if TYPE_CHECKING:
    from kernel import Kernel

MODES = ("password", "proxy")
DEFAULT_HEADER = "X-Forwarded-User"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def add_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--auth",
        choices=MODES,
        default=None,
        help="require authentication: 'password' (accounts from `comfykernel users`) or 'proxy' "
        "(a trusted reverse proxy names the user); off when not given",
    )
    add(
        "--auth-header",
        default=DEFAULT_HEADER,
        metavar="NAME",
        help=f"proxy mode: the header naming the user (default {DEFAULT_HEADER})",
    )
    add(
        "--trusted-proxy",
        action="append",
        default=None,
        metavar="CIDR",
        help="proxy mode: an address or network whose requests may name the user (repeatable); "
        "password mode: whose X-Forwarded-For is believed for rate limiting",
    )
    add(
        "--auth-no-autocreate",
        action="store_true",
        help="proxy mode: refuse users not created with `comfykernel users add` instead of creating them",
    )
    add(
        "--auth-shared-outputs",
        action="store_true",
        help="let every user /view every output (by default only the owner and admins)",
    )
    add(
        "--auth-session-hours",
        type=float,
        default=12.0,
        metavar="H",
        help="password mode: a login lasts this long (default 12)",
    )
    add(
        "--auth-max-failures",
        type=int,
        default=5,
        metavar="N",
        help="failed logins per client address and per user name before 429 (default 5)",
    )
    add(
        "--auth-failure-window",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long a failed login counts against the limit (default 300)",
    )
    add(
        "--tls-proxy",
        action="store_true",
        help="clients reach the server over HTTPS through a TLS-terminating proxy: session cookies "
        "are marked Secure",
    )


@dataclass(frozen=True)
class AuthOptions:
    mode: str | None = None
    header: str = DEFAULT_HEADER
    trusted: tuple[Network, ...] = ()
    autocreate: bool = True
    shared_outputs: bool = False
    session_seconds: float = 12 * 3600.0
    max_failures: int = 5
    failure_window: float = 300.0
    tls_proxy: bool = False

    @property
    def enabled(self) -> bool:
        return self.mode is not None

    def is_trusted(self, address: str | None) -> bool:
        if not address:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.trusted)


def _networks(values: Any) -> tuple[Network, ...]:
    found: list[Network] = []
    for raw in values or ():
        for part in str(raw).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                found.append(ipaddress.ip_network(part, strict=False))
            except ValueError as exc:
                raise StartupError(f"--trusted-proxy {part!r} is not an address or CIDR network") from exc
    return tuple(found)


def read_options(kernel: Kernel) -> AuthOptions:
    """The checked options; ``StartupError`` for values that would leave the server open or locked."""
    extra = kernel.settings.extra
    mode = extra.get("auth")
    if mode in (None, "", "off", False):
        return AuthOptions()
    if mode not in MODES:
        raise StartupError(f"--auth must be one of {', '.join(MODES)}, not {mode!r}")
    trusted = _networks(extra.get("trusted_proxy"))
    if mode == "proxy" and not trusted:
        raise StartupError("--auth proxy needs --trusted-proxy CIDR: the addresses of the proxy")
    header = str(extra.get("auth_header") or DEFAULT_HEADER).strip()
    if not header:
        raise StartupError("--auth-header must name a header")
    hours = float(extra.get("auth_session_hours", 12.0))
    failures = int(extra.get("auth_max_failures", 5))
    window = float(extra.get("auth_failure_window", 300.0))
    if not hours > 0:
        raise StartupError("--auth-session-hours must be positive")
    if failures < 1 or not window > 0:
        raise StartupError("--auth-max-failures and --auth-failure-window must be positive")
    return AuthOptions(
        mode=mode,
        header=header,
        trusted=trusted,
        autocreate=not extra.get("auth_no_autocreate", False),
        shared_outputs=bool(extra.get("auth_shared_outputs", False)),
        session_seconds=hours * 3600.0,
        max_failures=failures,
        failure_window=window,
        tls_proxy=bool(extra.get("tls_proxy", False)),
    )
