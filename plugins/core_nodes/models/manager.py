"""The model manager: load each model file once, keep it on the right device, let go when asked.

Models are cached by (kind, resolved path) and reused while the file's mtime and size are
unchanged. :meth:`ModelManager.use` moves a model's modules to the compute device, first moving
least-recently-used models back to the offload device when the compute device is short of memory;
a model larger than what is left is loaded partially (:func:`plan_partial`: the layers that fit
sit on the compute device, the others stay on the offload device and are copied over per call);
:meth:`ModelManager.load` likewise drops least-recently-used cached models when host memory is short.
``POST /free`` only *marks* work (:func:`on_free`); :meth:`ModelManager.apply_pending` does it
between prompts, so nothing is unloaded under a running node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import itertools
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from kernel import Kernel, StashKey

from .operations import streaming_class

T = TypeVar("T")
CheckInterrupt = Callable[[], None]
Loader = Callable[[Path, CheckInterrupt], T]
AvailableMemory = Callable[[torch.device], int]


def default_device(force_cpu: bool = False) -> torch.device:
    if not force_cpu and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def available_memory(device: torch.device) -> int:
    """Free bytes on ``device`` (host RAM for the CPU)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def modules_of(value: Any, _depth: int = 0) -> list[nn.Module]:
    """The torch modules inside a loaded value (a module, a wrapper with ``.model``, a dataclass...)."""
    if isinstance(value, nn.Module):
        return [value]
    if _depth > 3 or value is None or isinstance(value, (str, bytes, int, float, torch.Tensor)):
        return []
    if isinstance(value, (tuple, list)):
        return [m for v in value for m in modules_of(v, _depth + 1)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [m for f in dataclasses.fields(value) for m in modules_of(getattr(value, f.name), _depth + 1)]
    inner = getattr(value, "model", None)
    return modules_of(inner, _depth + 1) if isinstance(inner, nn.Module) else []


def module_bytes(module: nn.Module) -> int:
    tensors = itertools.chain(module.parameters(), module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def module_device(module: nn.Module) -> torch.device:
    for t in itertools.chain(module.parameters(), module.buffers()):
        return t.device
    return torch.device("cpu")


def own_bytes(module: nn.Module) -> int:
    """Bytes of the tensors ``module`` holds itself (not its children's)."""
    tensors = itertools.chain(module._parameters.values(), module._buffers.values())
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def plan_partial(module: nn.Module, budget: int) -> tuple[list[nn.Module], list[nn.Module]]:
    """Which of ``module``'s weight-holding submodules sit on the compute device (first) and which
    stay on the offload device and are copied over at each call (second), for ``budget`` bytes.

    Only layers with a casting twin (:func:`~.operations.streaming_class`: linear, convolution
    and norm layers) can stay behind; the others (norm scales, embeddings, a pack's own layers)
    always go to the compute device. Streamable layers fill what is left in network order."""
    holders = [m for m in module.modules() if own_bytes(m) > 0]
    fixed = [m for m in holders if streaming_class(m) is None]
    used = sum(own_bytes(m) for m in fixed)
    resident, streamed = list(fixed), []
    for m in holders:
        if streaming_class(m) is None:
            continue
        size = own_bytes(m)
        if used + size <= budget:
            resident.append(m)
            used += size
        else:
            streamed.append(m)
    return resident, streamed


def _move_own(module: nn.Module, device: torch.device) -> None:
    # Only the module's own tensors (its children are placed one by one); the Parameter objects
    # stay the same, as Module.to keeps them.
    for name, p in module._parameters.items():
        if p is not None and p.device != device:
            moved = p.data.to(device)
            if torch._has_compatible_shallow_copy_type(p, moved):
                p.data = moved
            else:  # as Module.to does where the tensor types differ (the meta device)
                module._parameters[name] = nn.Parameter(moved, requires_grad=p.requires_grad)
    for name, b in module._buffers.items():
        if b is not None and b.device != device:
            module._buffers[name] = b.to(device)


@dataclass
class _Entry:
    kind: str
    path: str
    # (mtime_ns, size) of the file and of every other file the value was built from.
    stamp: tuple[tuple[int, int], ...]
    value: Any
    modules: list[nn.Module]
    last_used: int = 0

    @property
    def nbytes(self) -> int:
        return sum(module_bytes(m) for m in self.modules)


@dataclass(frozen=True)
class LoadedModel:
    """What :meth:`ModelManager.loaded` reports for one cached model."""

    kind: str
    path: str
    device: str
    nbytes: int
    # Bytes on the compute device when the model is loaded partially (0: not partial).
    partial_bytes: int = 0


class ModelManager:
    def __init__(
        self,
        compute_device: torch.device | str | None = None,
        offload_device: torch.device | str = "cpu",
        reserve_bytes: int = 1 << 30,
        memory: AvailableMemory = available_memory,
        check_interrupt: CheckInterrupt | None = None,
    ) -> None:
        self.compute_device = torch.device(compute_device) if compute_device is not None else default_device()
        self.offload_device = torch.device(offload_device)
        self.reserve_bytes = reserve_bytes
        self._memory = memory
        self._check_interrupt = check_interrupt
        self._entries: dict[tuple[str, str], _Entry] = {}
        # Holders of tensors derived from a cached module (LoRA-merged weights) on its device:
        # released whenever the module moves or is dropped, so they never outlive its place.
        self._derived: weakref.WeakKeyDictionary[nn.Module, weakref.WeakSet[Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._clock = itertools.count(1)
        # Partially loaded modules: bytes on the compute device, and the classes of the layers
        # switched to their streaming twins (restored when the module moves as a whole).
        self._partial: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()
        self._streamed: weakref.WeakKeyDictionary[nn.Module, type[nn.Module]] = weakref.WeakKeyDictionary()
        # Room kept free beside a partially loaded model's resident layers, per streamed layer in
        # flight (its copy on the compute device), as a multiple of the largest streamed layer.
        self.stream_headroom = 2
        self._lock = threading.RLock()
        self._pending_lock = threading.Lock()
        self._pending_unload = False
        self._pending_free = False
        self._prompt_seen: str | None = None

    # -- loading -----------------------------------------------------------------------------

    def load(
        self,
        kind: str,
        path: Path,
        loader: Loader[T],
        check_interrupt: CheckInterrupt | None = None,
        also: Sequence[Path] = (),
    ) -> T:
        """The model at ``path`` as ``loader`` builds it, from the cache when the file is unchanged.

        ``also`` names the other files the model is built from (a text-encoder pair): a change to
        any of them reloads it too. ``loader(path, check_interrupt)`` must call
        ``check_interrupt`` now and then; it raises to abandon the load (an interrupted load
        leaves nothing cached).
        """
        resolved = path.resolve()
        stats = [p.stat() for p in (resolved, *(Path(p).resolve() for p in also))]
        stamp = tuple((st.st_mtime_ns, st.st_size) for st in stats)
        key = (kind, str(resolved))
        check = check_interrupt or self._check_interrupt or _default_check
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.stamp == stamp:
                entry.last_used = next(self._clock)
                return entry.value
            if entry is not None:
                self._drop(key)
            self._make_room(self.offload_device, sum(st.st_size for st in stats), keep=())
            value = loader(resolved, check)
            entry = _Entry(kind, str(resolved), stamp, value, modules_of(value))
            entry.last_used = next(self._clock)
            self._entries[key] = entry
            return value

    def track_derived(self, module: nn.Module, holder: Any) -> None:
        """``holder.release()`` is called whenever ``module`` is moved or dropped; the manager
        keeps only a weak reference to ``holder``."""
        with self._lock:
            self._derived.setdefault(module, weakref.WeakSet()).add(holder)

    def _move(self, module: nn.Module, device: torch.device) -> None:
        # Tensors derived from any module inside (a cached UNet within a BaseModel) go too.
        for sub in module.modules():
            self._release_derived(sub)
            self._partial.pop(sub, None)
            original = self._streamed.pop(sub, None)
            if original is not None:
                sub.__class__ = original
        module.to(device)

    def _place(self, module: nn.Module) -> None:
        """Move ``module`` to the compute device, whole when it fits in what is free there, else
        partially (:func:`plan_partial`)."""
        free = self._memory(self.compute_device) - self.reserve_bytes
        if module_bytes(module) <= free:
            self._move(module, self.compute_device)
            return
        largest = max((own_bytes(m) for m in module.modules() if streaming_class(m) is not None), default=0)
        resident, streamed = plan_partial(module, max(0, free - self.stream_headroom * largest))
        for sub in module.modules():
            self._release_derived(sub)
        for m in resident:
            _move_own(m, self.compute_device)
        for m in streamed:
            _move_own(m, self.offload_device)
            twin = streaming_class(m)
            if twin is not None and type(m) is not twin:
                self._streamed[m] = type(m)
                m.__class__ = twin
        self._partial[module] = sum(own_bytes(m) for m in resident)

    def is_partial(self, module: nn.Module) -> bool:
        """Whether ``module`` is loaded partially (some layers left on the offload device)."""
        return module in self._partial

    def _derived_bytes(self, modules: Sequence[nn.Module]) -> int:
        """Bytes the derived holders of ``modules`` (and of modules inside them) still have to
        make on the compute device (their ``pending_bytes``; holders without it count 0)."""
        total = 0
        for m in modules:
            for sub in m.modules():
                for holder in list(self._derived.get(sub, ())):
                    pending = getattr(holder, "pending_bytes", None)
                    if callable(pending):
                        total += int(pending(self.compute_device))
        return total

    def _release_derived(self, module: nn.Module) -> None:
        for holder in list(self._derived.get(module, ())):
            holder.release()

    # -- devices -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def use(self, *values: Any) -> Iterator[torch.device]:
        """Move the models in ``values`` to the compute device for the block; yields the device.

        They stay there afterwards (the next step likely needs them again) until memory is
        needed for other models or ``/free`` asks.
        """
        modules = [m for v in values for m in modules_of(v)]
        with self._lock:
            stamp = next(self._clock)
            # A cached model may come inside another module (a pack's MODEL hands over the whole
            # BaseModel around a cached UNet): it is used, and kept, all the same.
            inside = {id(sub) for m in modules for sub in m.modules()}
            used = [e for e in self._entries.values() if any(id(m) in inside for m in e.modules)]
            for entry in used:
                entry.last_used = stamp
            missing = sum(
                module_bytes(m) for m in modules if m not in self._partial and module_device(m) != self.compute_device
            )
            # LoRA-merged copies the modules' patches will make there take room too, even for a
            # module already in place.
            missing += self._derived_bytes(modules)
            if missing and self.compute_device != self.offload_device:
                self._make_room(self.compute_device, missing, keep=[m for e in used for m in e.modules] + modules)
            for m in modules:
                if m not in self._partial and module_device(m) != self.compute_device:
                    self._place(m)
        yield self.compute_device

    def _make_room(self, device: torch.device, needed: int, keep: Any) -> None:
        """Offload (compute device) or drop (offload device) LRU models until ``needed`` fits."""
        while self._memory(device) < needed + self.reserve_bytes:
            victims = [
                (e.last_used, k)
                for k, e in self._entries.items()
                if not any(m in keep for m in e.modules)
                and (
                    device == self.offload_device
                    or any(module_device(m) == device or m in self._partial for m in e.modules)
                )
            ]
            if not victims:
                return
            _, key = min(victims)
            if device == self.offload_device:
                self._drop(key)
            else:
                for m in self._entries[key].modules:
                    self._move(m, self.offload_device)
                _empty_cache(device)

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key)
        device = self.compute_device
        for m in entry.modules:
            self._release_derived(m)
        entry.modules.clear()
        entry.value = None
        gc.collect()
        _empty_cache(device)

    # -- /free -------------------------------------------------------------------------------

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        """Remember a ``/free`` request; safe from any thread, done by :meth:`apply_pending`."""
        with self._pending_lock:
            self._pending_unload |= unload_models
            self._pending_free |= free_memory

    def apply_pending(self) -> None:
        """Carry out remembered ``/free`` requests; call between prompts."""
        with self._pending_lock:
            unload, free = self._pending_unload, self._pending_free
            self._pending_unload = self._pending_free = False
        if unload:
            self.unload_all()
        elif free:
            self.offload_all()

    def apply_pending_if_idle(self, idle: Callable[[], bool]) -> bool:
        """:meth:`apply_pending` from outside the executor thread, never waiting for it.

        ``idle`` is asked while the lock is held: a prompt that starts after that blocks in
        :meth:`load` / :meth:`use` until the work is done, so no model moves under a running
        node, and a load in progress (the lock taken) leaves the work marked instead of
        stalling the caller. False when nothing was applied.
        """
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if not idle():
                return False
            self.apply_pending()
            return True
        finally:
            self._lock.release()

    def prompt_started(self, prompt_id: str | None) -> None:
        """Executor thread, before a node: apply marked work once per prompt, at its first node."""
        if prompt_id != self._prompt_seen:
            self._prompt_seen = prompt_id
            self.apply_pending()

    def unload_all(self) -> None:
        with self._lock:
            # Others (the executor's output cache) may still hold these models: off the compute
            # device first, or their memory stays taken where nothing tracks it any more.
            self.offload_all()
            for key in list(self._entries):
                self._drop(key)

    def offload_all(self) -> None:
        with self._lock:
            for entry in self._entries.values():
                for m in entry.modules:
                    self._move(m, self.offload_device)
            gc.collect()
            _empty_cache(self.compute_device)

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return [
                LoadedModel(
                    e.kind,
                    e.path,
                    str(module_device(e.modules[0])) if e.modules else "cpu",
                    e.nbytes,
                    sum(self._partial.get(m, 0) for m in e.modules),
                )
                for e in sorted(self._entries.values(), key=lambda e: e.last_used)
            ]


def _default_check() -> None:
    from kernel.progress import throw_if_interrupted

    throw_if_interrupted()


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


MANAGER_KEY = StashKey[ModelManager]()


def get_manager(kernel: Kernel) -> ModelManager:
    """The kernel's model manager, created on first use (honours ``--cpu``)."""
    manager = kernel.stash.get(MANAGER_KEY, None)
    if manager is None:
        manager = ModelManager(compute_device=default_device(force_cpu=kernel.settings.cpu))
        kernel.stash[MANAGER_KEY] = manager
    return manager


def on_free(kernel: Kernel, unload_models: bool, free_memory: bool) -> None:
    """For the core_nodes ``on_free`` hookimpl: mark the request, applied between prompts."""
    get_manager(kernel).request_free(unload_models, free_memory)


def _executing(kernel: Kernel) -> Any:
    return getattr(getattr(kernel, "executor", None), "current", None)


def between_prompts(kernel: Kernel) -> None:
    """For the core_nodes plugin to call on the event loop after ``/free`` or ``PromptFinished``.

    Applies marked work only while no prompt runs: ``PromptFinished`` reaches the event loop
    after the executor may already have started the next prompt, whose models must not be
    offloaded mid-step. Work left marked is done by :func:`before_node` at that prompt's start.
    """
    manager = kernel.stash.get(MANAGER_KEY, None)
    if manager is not None:
        manager.apply_pending_if_idle(lambda: _executing(kernel) is None)


def before_node(kernel: Kernel) -> None:
    """For the core_nodes plugin to call in the executor thread before each node."""
    manager = kernel.stash.get(MANAGER_KEY, None)
    if manager is not None:
        manager.prompt_started(getattr(_executing(kernel), "prompt_id", None))
