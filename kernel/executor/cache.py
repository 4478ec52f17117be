"""Output caches keyed by input signature, and the node-instance cache.

A node's key is a digest of its class, its ``IS_CHANGED`` value, its literal inputs and the
keys of the nodes it links to (a Merkle chain), plus its id when the node is not idempotent
or asks for ``UNIQUE_ID``. So node ids do not matter, identical sub-graphs share entries,
and changing one widget changes the key of that node and of everything downstream only.
Digests keep lookups O(1) however deep the graph is.

Four policies, chosen by ``settings.cache_mode``: ``classic`` keeps what the latest prompt
used, ``lru`` keeps the N most recently used entries, ``ram`` keeps everything until free
RAM drops under a threshold, ``none`` keeps nothing between prompts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any, NamedTuple

from kernel.executor.graph import DynamicPrompt
from kernel.nodes.graph import is_link

log = logging.getLogger("comfykernel.executor")


class CacheEntry(NamedTuple):
    """What a node produced: its UI dict (or None) and one list of values per output slot."""

    ui: dict[str, Any] | None
    outputs: list[list[Any]]


def _canonical(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if not math.isnan(value) else {"~never": uuid.uuid4().hex}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {"~map": sorted(([_canonical(k), _canonical(v)] for k, v in value.items()), key=repr)}
    return {"~never": uuid.uuid4().hex}


class SignatureKeys:
    """Computes (and memoizes per prompt) the cache key of each node of a DynamicPrompt.

    ``identity_bound(class_type)`` says whether the node id belongs in the key
    (``NOT_IDEMPOTENT`` or a ``UNIQUE_ID`` hidden input); ``is_changed`` holds each node's
    ``IS_CHANGED`` value where the class has one.
    """

    def __init__(self, dynprompt: DynamicPrompt, identity_bound: Callable[[str], bool]) -> None:
        self.dynprompt = dynprompt
        self.identity_bound = identity_bound
        self.is_changed: dict[str, Any] = {}
        self._keys: dict[str, bytes] = {}

    def key(self, node_id: str) -> bytes:
        found = self._keys.get(node_id)
        if found is not None:
            return found
        # Iterative post-order walk; a node met again while still open sits on a cycle (only
        # possible among nodes validation never looked at) and gets a never-matching key.
        stack: list[tuple[str, bool]] = [(node_id, False)]
        open_nodes: set[str] = set()
        while stack:
            current, expanded = stack.pop()
            if current in self._keys:
                continue
            if expanded:
                open_nodes.discard(current)
                self._keys[current] = self._digest(current)
                continue
            if current in open_nodes:
                self._keys[current] = uuid.uuid4().bytes
                continue
            if not self.dynprompt.has_node(current):
                self._keys[current] = uuid.uuid4().bytes
                continue
            open_nodes.add(current)
            stack.append((current, True))
            for value in self.dynprompt.get_node(current).get("inputs", {}).values():
                if is_link(value) and value[0] not in self._keys:
                    if value[0] in open_nodes:
                        self._keys[value[0]] = uuid.uuid4().bytes
                    else:
                        stack.append((value[0], False))
        return self._keys[node_id]

    def _digest(self, node_id: str) -> bytes:
        node = self.dynprompt.get_node(node_id)
        class_type = node.get("class_type")
        inputs = node.get("inputs", {})
        parts: list[Any] = []
        for name in sorted(inputs):
            value = inputs[name]
            if is_link(value):
                parent = self._keys.get(value[0])
                parts.append([name, "L", parent.hex() if parent else uuid.uuid4().hex, value[1]])
            else:
                parts.append([name, "V", _canonical(value)])
        signature = [
            class_type,
            _canonical(self.is_changed.get(node_id)),
            node_id if isinstance(class_type, str) and self.identity_bound(class_type) else None,
            parts,
        ]
        encoded = json.dumps(signature, separators=(",", ":"), default=lambda o: uuid.uuid4().hex)
        return hashlib.blake2b(encoded.encode(), digest_size=20).digest()


class OutputCache:
    """Classic policy: after each prompt starts, only entries that prompt can use survive."""

    def __init__(self) -> None:
        # key -> (entry, owner): the entry's own key, or the expanding node it came from
        self._entries: dict[bytes, tuple[CacheEntry, Hashable]] = {}

    def get(self, key: bytes) -> CacheEntry | None:
        found = self._entries.get(key)
        return found[0] if found is not None else None

    def set(self, key: bytes, entry: CacheEntry, owner: Hashable) -> None:
        self._entries[key] = (entry, owner)

    def begin_prompt(self, used: set[Any]) -> None:
        self._entries = {k: v for k, v in self._entries.items() if k in used or v[1] in used}

    def discard(self, keys: Iterable[bytes]) -> None:
        """Drop these entries (a prompt stopped by a limit frees what it produced)."""
        for key in keys:
            self._entries.pop(key, None)

    def after_node(self) -> None:
        return None

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class LRUOutputCache(OutputCache):
    """Keeps at most ``max_size`` entries, evicting the least recently used prompt's first."""

    def __init__(self, max_size: int | None) -> None:
        super().__init__()
        self.max_size = max_size
        self.generation = 0
        self._lru: OrderedDict[bytes, tuple[CacheEntry, int]] = OrderedDict()

    def get(self, key: bytes) -> CacheEntry | None:
        found = self._lru.get(key)
        if found is None:
            return None
        self._lru[key] = (found[0], self.generation)
        self._lru.move_to_end(key)
        return found[0]

    def set(self, key: bytes, entry: CacheEntry, owner: Hashable) -> None:
        self._lru[key] = (entry, self.generation)
        self._lru.move_to_end(key)
        self._evict_over_size()

    def begin_prompt(self, used: set[Any]) -> None:
        self.generation += 1
        self._evict_over_size()

    def _evict_over_size(self) -> None:
        if self.max_size is None:
            return
        while len(self._lru) > self.max_size:
            key, (_, generation) = next(iter(self._lru.items()))
            if generation >= self.generation:
                break  # everything left is in use by the running prompt
            del self._lru[key]

    def discard(self, keys: Iterable[bytes]) -> None:
        for key in keys:
            self._lru.pop(key, None)

    def evict_oldest_generation(self) -> bool:
        if not self._lru:
            return False
        _, (_, oldest) = next(iter(self._lru.items()))
        if oldest >= self.generation:
            return False
        for key in [k for k, v in self._lru.items() if v[1] == oldest]:
            del self._lru[key]
        return True

    def clear(self) -> None:
        self._lru.clear()

    def __len__(self) -> int:
        return len(self._lru)


class RAMOutputCache(LRUOutputCache):
    """No size limit; when free RAM falls under ``headroom_gb`` the oldest prompts' entries go."""

    # Free RAM is read at most this often: a read costs ~0.1 ms, more than a small node.
    CHECK_INTERVAL = 0.05

    def __init__(self, headroom_gb: float) -> None:
        super().__init__(None)
        self.headroom = headroom_gb * (1024**3)
        self._next_check = 0.0

    def begin_prompt(self, used: set[Any]) -> None:
        super().begin_prompt(used)
        self._next_check = 0.0  # the first node of every prompt checks

    def after_node(self) -> None:
        import psutil

        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.CHECK_INTERVAL
        while psutil.virtual_memory().available < self.headroom:
            if not self.evict_oldest_generation():
                break


class NullOutputCache(OutputCache):
    """``--cache-none``: nothing outlives its prompt."""

    def get(self, key: bytes) -> CacheEntry | None:
        return None

    def set(self, key: bytes, entry: CacheEntry, owner: Hashable) -> None:
        return None


def make_output_cache(mode: str, lru_size: int, ram_gb: float | None) -> OutputCache:
    if mode == "none":
        return NullOutputCache()
    if mode == "lru":
        return LRUOutputCache(max(1, lru_size))
    if mode == "ram":
        return RAMOutputCache(ram_gb if ram_gb is not None else 4.0)
    return OutputCache()


class ObjectCache:
    """Node instances by ``(node id, class)``, reused across prompts unless caching is off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._objects: dict[tuple[str, str], Any] = {}

    def get_or_create(self, node_id: str, class_type: str, factory: Callable[[], Any]) -> Any:
        if not self.enabled:
            return factory()
        key = (node_id, class_type)
        found = self._objects.get(key)
        if found is None:
            found = self._objects[key] = factory()
        return found

    def keep_only(self, node_ids: set[str]) -> None:
        """Classic pruning: drop instances of nodes the new prompt does not have."""
        self._objects = {
            k: v for k, v in self._objects.items() if k[0] in node_ids or k[0].split(".", 1)[0] in node_ids
        }

    def clear(self) -> None:
        self._objects.clear()
