"""The plugin's per-kernel state, kept in ``kernel.stash[STATE]``."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kernel import StashKey
from plugins.assets.seed import Seeder
from plugins.assets.store import AssetStore


@dataclass
class AssetsState:
    store: AssetStore
    seeder: Seeder
    # One worker: output files are hashed in order, off the loop, never two at once.
    worker: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="assets-register")
    )
    pending: set[Future[Any]] = field(default_factory=set)

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        future = self.worker.submit(fn, *args)
        self.pending.add(future)
        future.add_done_callback(self.pending.discard)
        return future


STATE = StashKey[AssetsState]()
