"""Typed errors of the kernel; each message names the offending thing."""

from __future__ import annotations


class KernelError(Exception):
    """Base class of comfykernel's own errors."""


class StartupError(KernelError):
    """The kernel cannot start: bad plugin selection, duplicate registrations, failed essentials."""


class UsageError(StartupError):
    """The user asked for something impossible (an unknown plugin, disabling an essential one)."""
