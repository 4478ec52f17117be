"""``kernel.assets``: what the kernel's file routes ask of the asset store.

    found = kernel.assets.resolve_hash("blake3:<hex>", user)     # (path, mime_type, name) or None
    info = await asyncio.to_thread(kernel.assets.register_upload, path, "input", user)

``user`` is the Comfy-User of the request in multi-user mode and ``None`` otherwise. Both
methods are thread-safe; ``register_upload`` hashes the file, so call it off the event loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernel.paths import type_root
from plugins.assets import hashing, records
from plugins.assets.store import AssetStore

if TYPE_CHECKING:
    from kernel import Kernel

__all__ = ["AssetsAPI"]


class AssetsAPI:
    def __init__(self, kernel: Kernel, store: AssetStore) -> None:
        self._kernel = kernel
        self._store = store

    def _owners(self, user: str | None) -> tuple[str, ...] | None:
        if not self._kernel.settings.multi_user:
            return None
        return ("", user) if user else ("",)

    def resolve_hash(self, content_hash: str, user: str | None = None) -> tuple[Path, str, str] | None:
        """The file behind ``blake3:<hex>`` visible to ``user``: ``(path, mime_type, name)``, or None."""
        normal = hashing.normalize_hash(content_hash)
        if normal is None:
            return None
        row = self._store.visible_with_hash(normal, self._owners(user))
        if row is None:
            return None
        path = self._store.live_path(normal, prefer=row.path)
        if path is None:
            return None
        return Path(path), row.mime_type, row.name

    def register_upload(self, path: str | Path, file_type: str, user: str | None = None) -> dict[str, Any]:
        """Record a file just written by ``/upload/image`` (blocking: hashes it).

        Returns the ``asset`` object of the upload response: ``id``, ``name``, ``asset_hash``,
        ``size``, ``mime_type``, ``tags``.
        """
        file_path = Path(path)
        root = type_root(self._kernel, file_type)
        owner = user if (self._kernel.settings.multi_user and user) else ""
        record = records.describe(
            str(file_path),
            [file_type],
            file_path.name,
            records.file_metadata(file_type, root, file_path),
            owner=owner,
        )
        self._store.record_files([record])
        row = self._store.get_by_path(str(file_path))
        assert row is not None  # just written under the store's lock
        return {
            "id": row.id,
            "name": row.name,
            "asset_hash": row.hash,
            "size": row.size,
            "mime_type": row.mime_type,
            "tags": self._store.tags_of([row.id])[row.id],
        }
