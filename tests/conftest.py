"""Shared test helpers: the fixtures themselves come from kernel.testing (pytest11 entry point)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kernel.event_loop import loop_factory

# The tests' event loop is the one `comfykernel run` serves on (uvloop where it is installed), so
# the servers the fixtures start run as they do in production; the CLI tests cover
# `--event-loop asyncio` (and the executor's own thread always runs asyncio's loop).
_SERVER_LOOP = loop_factory("auto")
if _SERVER_LOOP is not None:

    def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
        return {"server-loop": _SERVER_LOOP}


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch single-threaded for the test: on two shared cores, OpenMP workers spinning against
    other processes make tiny convolutions up to 100x slower. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch  # here, not at import: most tests never load torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Tests import torchvision (directly, or through transformers) in this process: make that survive
# the CPU torch exactly as the server does (kernel/torchvision_ops.py). Lazy: torch is
# imported only when torchvision is.
from kernel.torchvision_ops import install_torchvision_hook  # noqa: E402

install_torchvision_hook()
