"""The model manager: caching by path + mtime, memory pressure, /free, interruptible loads."""

from __future__ import annotations

import os
import threading
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from kernel.progress import Interrupted
from plugins.core_nodes.models.checkpoint import load_vae
from plugins.core_nodes.models.manager import (
    MANAGER_KEY,
    ModelManager,
    between_prompts,
    get_manager,
    module_bytes,
    module_device,
    on_free,
)

from . import tiny_sd


def _vae_file(tmp_path: Path, name: str = "vae.safetensors") -> Path:
    path = tmp_path / name
    save_file(tiny_sd.vae_weights(), str(path))
    return path


class CountingLoader:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path: Path, check):  # type: ignore[no-untyped-def]
        self.calls += 1
        return load_vae(path, check)


def test_load_once_and_reload_when_the_file_changes(tmp_path: Path) -> None:
    path = _vae_file(tmp_path)
    manager = ModelManager(compute_device="cpu")
    loader = CountingLoader()
    first = manager.load("vae", path, loader)
    assert manager.load("vae", tmp_path / "." / "vae.safetensors", loader) is first
    assert loader.calls == 1
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    second = manager.load("vae", path, loader)
    assert loader.calls == 2
    assert second is not first
    assert [m.path for m in manager.loaded()] == [str(path.resolve())]


def test_a_change_to_any_file_of_a_set_reloads_it(tmp_path: Path) -> None:
    """A model built from two files (a text-encoder pair) is cached under the first; a change to
    the second reloads it too, and the stale copy is not kept beside the new one."""
    first_file = _vae_file(tmp_path, "a.safetensors")
    second_file = _vae_file(tmp_path, "b.safetensors")
    manager = ModelManager(compute_device="cpu")
    loader = CountingLoader()
    first = manager.load("pair", first_file, loader, also=[second_file])
    assert manager.load("pair", first_file, loader, also=[second_file]) is first
    stat = second_file.stat()
    os.utime(second_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    second = manager.load("pair", first_file, loader, also=[second_file])
    assert loader.calls == 2
    assert second is not first
    assert len(manager.loaded()) == 1


def test_interrupted_load_caches_nothing(tmp_path: Path) -> None:
    path = _vae_file(tmp_path)

    def interrupted() -> None:
        raise Interrupted("Processing interrupted")

    manager = ModelManager(compute_device="cpu", check_interrupt=interrupted)
    with pytest.raises(Interrupted):
        manager.load("vae", path, load_vae)
    assert manager.loaded() == []


def test_host_memory_pressure_drops_least_recently_used(tmp_path: Path) -> None:
    paths = [_vae_file(tmp_path, f"v{i}.safetensors") for i in range(3)]
    short = {"checks": 0}

    def memory(device: torch.device) -> int:
        # Short of memory for exactly one check: one model has to go, then everything fits.
        short["checks"] -= 1
        return 0 if short["checks"] == 0 else 1 << 40

    manager = ModelManager(compute_device="cpu", reserve_bytes=0, memory=memory)
    manager.load("vae", paths[0], load_vae)
    manager.load("vae", paths[1], load_vae)
    manager.load("vae", paths[0], load_vae)  # a cache hit touches v0: v1 is now least recently used
    short["checks"] = 1
    manager.load("vae", paths[2], load_vae)
    assert [Path(m.path).name for m in manager.loaded()] == ["v0.safetensors", "v2.safetensors"]


def test_free_is_applied_between_prompts(tmp_path: Path) -> None:
    manager = ModelManager(compute_device="cpu")
    manager.load("vae", _vae_file(tmp_path), load_vae)
    manager.request_free(unload_models=False, free_memory=True)
    manager.apply_pending()
    assert len(manager.loaded()) == 1  # free_memory alone only offloads
    manager.request_free(unload_models=True, free_memory=False)
    assert len(manager.loaded()) == 1  # marked, not yet done
    manager.apply_pending()
    assert manager.loaded() == []


def test_use_reports_the_compute_device_and_sizes(tmp_path: Path) -> None:
    manager = ModelManager(compute_device="cpu")
    vae = manager.load("vae", _vae_file(tmp_path), load_vae)
    with manager.use(vae) as device:
        assert device == torch.device("cpu")
    (info,) = manager.loaded()
    assert info.device == "cpu"
    assert info.nbytes == module_bytes(vae.model) > 0


def test_on_free_marks_the_kernel_manager(tmp_path: Path, make_kernel) -> None:  # type: ignore[no-untyped-def]
    kernel = make_kernel(cpu=True)
    manager = get_manager(kernel)
    assert kernel.stash[MANAGER_KEY] is manager
    assert manager.compute_device == torch.device("cpu")
    manager.load("vae", _vae_file(tmp_path), load_vae)
    on_free(kernel, unload_models=True, free_memory=True)
    assert len(manager.loaded()) == 1
    between_prompts(kernel)
    assert manager.loaded() == []


def test_free_marked_while_a_prompt_runs_waits_for_its_next_prompt(tmp_path: Path, make_kernel) -> None:  # type: ignore[no-untyped-def]
    # PromptFinished reaches the event loop after the executor may have started the next
    # prompt: applying /free then would offload that prompt's models in the middle of a step.
    from plugins.core_nodes.models import manager as manager_module

    kernel = make_kernel(cpu=True)
    kernel.executor = types.SimpleNamespace(current=types.SimpleNamespace(prompt_id="b"))
    manager = get_manager(kernel)
    manager.load("vae", _vae_file(tmp_path), load_vae)
    on_free(kernel, unload_models=True, free_memory=False)
    between_prompts(kernel)
    assert len(manager.loaded()) == 1  # prompt "b" is running: left marked
    manager_module.before_node(kernel)  # executor thread, b's first node
    assert manager.loaded() == []
    manager.load("vae", _vae_file(tmp_path), load_vae)
    on_free(kernel, unload_models=True, free_memory=False)
    manager_module.before_node(kernel)  # a later node of the same prompt
    assert len(manager.loaded()) == 1
    kernel.executor.current = None
    between_prompts(kernel)  # idle: applied at once
    assert manager.loaded() == []


def test_between_prompts_never_waits_for_a_load_in_progress(tmp_path: Path, make_kernel) -> None:  # type: ignore[no-untyped-def]
    # between_prompts runs on the event loop; a multi-gigabyte load holds the manager's lock.
    kernel = make_kernel(cpu=True)
    kernel.executor = types.SimpleNamespace(current=None)
    manager = get_manager(kernel)
    manager.load("vae", _vae_file(tmp_path, "a.safetensors"), load_vae)
    started, release = threading.Event(), threading.Event()

    def slow_loader(path: Path, check):  # type: ignore[no-untyped-def]
        started.set()
        release.wait(10)
        return load_vae(path, check)

    loading = threading.Thread(
        target=manager.load, args=("vae", _vae_file(tmp_path, "b.safetensors"), slow_loader)
    )
    loading.start()
    try:
        assert started.wait(10)
        on_free(kernel, unload_models=True, free_memory=False)
        caller = threading.Thread(target=between_prompts, args=(kernel,))
        caller.start()
        caller.join(2)
        assert not caller.is_alive(), "between_prompts blocked behind a load"
    finally:
        release.set()
        loading.join(10)
    assert len(manager.loaded()) == 2  # still marked, not lost
    between_prompts(kernel)
    assert manager.loaded() == []


def test_unload_moves_models_off_the_compute_device(tmp_path: Path) -> None:
    # The executor's output cache may still hold an unloaded model; left on the compute device
    # its memory would stay taken yet no longer tracked, so nothing could ever offload it.
    # ("meta" stands in for the offload device: this host has no second device.)
    manager = ModelManager(compute_device="cpu", offload_device="meta", memory=lambda device: 1 << 60)
    vae = manager.load("vae", _vae_file(tmp_path), load_vae)
    with manager.use(vae):
        pass
    manager.request_free(unload_models=True, free_memory=False)
    manager.apply_pending()
    assert manager.loaded() == []
    assert module_device(vae.model).type == "meta"


def test_lora_merged_weights_are_released_when_the_base_moves_or_goes(tmp_path: Path) -> None:
    """Merged LoRA tensors live on the base module's device; /free (offload or unload) and LRU
    offloading let them go too, instead of leaving them on the compute device untracked."""
    from torch import nn

    from plugins.core_nodes.models.lora import Delta, PatchedWeights

    marker = tmp_path / "linear.bin"
    marker.write_bytes(b"x")
    manager = ModelManager(compute_device="cpu")
    base = manager.load("linear", marker, lambda path, check: nn.Linear(3, 2))
    delta = Delta("lora", (torch.ones(2, 1), torch.ones(1, 3)), 1.0)
    weights = PatchedWeights(base, {"weight": [(0.5, delta)]})
    manager.track_derived(base, weights)

    merged = weights.merged()["weight"]
    assert torch.allclose(merged, base.weight + 0.5)
    assert weights.merged()["weight"] is merged  # kept while the base stays put
    manager.offload_all()
    assert weights._merged is None
    assert torch.allclose(weights.merged()["weight"], base.weight + 0.5)
    manager.unload_all()
    assert weights._merged is None


def test_lora_merged_copies_are_counted_when_making_room(tmp_path: Path) -> None:
    """A LoRA'd model needs room for its merged weights beside its own: using it offloads
    least-recently-used models for them too, even when the base already sits on the compute
    device. ("meta" stands in for the compute device, the CPU for the offload device.)"""
    from torch import nn

    from plugins.core_nodes.models.lora import Delta, PatchedWeights

    def marker(name: str) -> Path:
        path = tmp_path / name
        path.write_bytes(b"x")
        return path

    class Movable(nn.Linear):
        """A layer that may leave the stand-in device: a meta tensor holds no data to copy, so
        moving off it gives fresh host storage."""

        def to(self, *args: Any, **kwargs: Any) -> Any:
            device = torch._C._nn._parse_to(*args, **kwargs)[0]
            if device is not None and device.type == "cpu" and self.weight.is_meta:
                return self.to_empty(device=device)
            return super().to(*args, **kwargs)

    size = module_bytes(nn.Linear(64, 64))
    merged_size = 64 * 64 * 4  # the patched weight, float32
    held: list[PatchedWeights] = []

    def memory(device: torch.device) -> int:
        # The stand-in compute device holds two models; a LoRA's merged copy does not fit beside them.
        if device.type != "meta":
            return 1 << 40
        used = sum(module_bytes(m) for m in (a, b) if module_device(m).type == "meta")
        used += sum(t.numel() * t.element_size() for w in held for t in (w._merged or {}).values())
        return 2 * size + merged_size // 2 - used

    manager = ModelManager(compute_device="meta", offload_device="cpu", reserve_bytes=0, memory=memory)
    a = manager.load("linear", marker("a.bin"), lambda path, check: Movable(64, 64))
    b = manager.load("linear", marker("b.bin"), lambda path, check: Movable(64, 64))
    with manager.use(a):
        pass
    with manager.use(b):
        pass
    assert module_device(a).type == module_device(b).type == "meta"  # both fit

    delta = Delta("lora", (torch.ones(64, 1), torch.ones(1, 64)), 1.0)
    weights = PatchedWeights(b, {"weight": [(0.5, delta)]})
    held.append(weights)
    manager.track_derived(b, weights)
    assert weights.pending_bytes(torch.device("meta")) == merged_size
    with manager.use(b):
        assert module_device(a).type == "cpu"  # made room for b's merged weight
        weights.merged()
    assert memory(torch.device("meta")) >= 0
    assert weights.pending_bytes(torch.device("meta")) == 0  # made: nothing more to find room for
    with manager.use(a):
        pass
    # a came back: b (least recently used) went, its merged copy with it.
    assert module_device(b).type == "cpu" and weights._merged is None
