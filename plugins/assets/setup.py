"""Building and tearing down the plugin's state (called from the hooks in plugin.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from plugins.assets.api import AssetsAPI
from plugins.assets.seed import Seeder
from plugins.assets.state import STATE, AssetsState
from plugins.assets.store import AssetStore
from plugins.assets.uploads import remove_stale_temps

if TYPE_CHECKING:
    from kernel import Kernel


def install(kernel: Kernel) -> None:
    store = AssetStore(kernel.settings.user_path)
    kernel.stash[STATE] = AssetsState(store=store, seeder=Seeder(kernel, store))
    kernel.assets = AssetsAPI(kernel, store)


def open_store(kernel: Kernel) -> None:
    kernel.stash[STATE].store.open()
    # A process killed mid-upload leaves its partial temp file behind; no upload runs yet.
    remove_stale_temps(kernel.settings.user_path)


def close(kernel: Kernel) -> None:
    state = kernel.stash[STATE]
    state.seeder.cancel()
    state.seeder.join(timeout=10)
    state.worker.shutdown(wait=True, cancel_futures=False)
    state.store.close()
