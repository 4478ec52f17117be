"""Every ComfyUI symbol that two or more real custom-node packs use is there, under its reference name.

The rows come from the survey of 41 packs (``shared/reference/compat-surface.md`` beside the repository, turned
into ``data/*.tsv`` by ``bench/compat_surface.py``). One test per row, so a failure names the
missing symbol. The rules:

* table (a), ``in ref`` = ``yes`` / ``module dunder`` / ``?``: the module imports and the attribute
  can be read from it.
* table (a), ``in ref`` = ``no`` / ``no module``: names the reference no longer has; packs reach for
  them inside ``try/except ImportError`` as fallbacks. When our layer has the module, the name must
  be there too (a half-present fallback breaks the pack's ``except`` branch); when it has not,
  importing it must raise ``ImportError`` (what the pack's ``except`` catches), nothing else.
* table (a2), attribute chains past a module-level symbol: each step is read with ``getattr``; a
  step written ``X()`` stands for "an instance of X": for a class, the next name must be on the class
  (methods and class attributes); a factory function (``io.Custom``) is called with a type name.
  The chains that read instance state which only a built model has are checked in
  :func:`test_ksampler_instance_state` (``KSampler().sigmas``) or, under a fallback module
  (``comfy.sd3_clip.SD3ClipModel().t5xxl``), only up to the class: it must exist and be callable.
* table (b), ``PromptServer.instance`` attributes used by two or more packs: read on the instance.
* table (c), MODEL / CLIP / VAE attributes the survey found on the reference class (``on class`` =
  yes) and two or more packs use: read on the objects ``CheckpointLoaderSimple`` gives for a tiny
  SD1 checkpoint; ``name()`` must be callable.

Nothing is skipped: a row whose module another area has not written yet fails until it lands.
"""

from __future__ import annotations

import asyncio
import csv
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kernel.app import Kernel
from kernel.testing import build_kernel
from plugins.comfy_compat.state import STATE
from tests.plugins.core_nodes import tiny_pipeline

DATA = Path(__file__).resolve().parent / "data"
PLUGINS = ["comfy_compat", "models", "core_nodes"]
CHECKPOINT = "tiny_sd1.safetensors"


def _rows(name: str) -> list[dict[str, str]]:
    with open(DATA / name, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


SYMBOLS = _rows("compat_surface.tsv")
CHAINS = [row for row in _rows("compat_chains.tsv") if int(row["packs"]) >= 2]
# (a2) chains reading state an instance only has once built (see the module docstring).
INSTANCE_STATE = {
    "comfy.samplers.KSampler().sigmas",
    "comfy.samplers.KSampler().sigmas.flip",
}
FALLBACK_MODULES = {
    row["symbol"].rpartition(".")[0] for row in SYMBOLS if row["in_ref"] in ("no", "no module")
}


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    """A kernel with the compatibility modules installed and a tiny SD1 checkpoint to load."""
    base = tmp_path_factory.mktemp("surface")
    tiny_pipeline.write_checkpoint(base / "models" / "checkpoints" / CHECKPOINT, "sd1")
    kernel = build_kernel(base, PLUGINS)
    yield kernel
    asyncio.run(kernel.hooks.shutdown(kernel))


@pytest.fixture
def shims(kernel: Kernel) -> Kernel:
    """Rebinds the shims to this module's kernel (a test elsewhere may have taken them over)."""
    runtime = importlib.import_module("comfykernel_compat_runtime")
    if runtime.state() is not kernel.stash[STATE]:
        pytest.fail("the compatibility modules were rebound to another kernel during this module")
    return kernel


def _import_longest(dotted: str) -> tuple[Any, list[str]]:
    """The deepest importable module on ``dotted``'s path and the names left to read from it."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            return importlib.import_module(".".join(parts[:cut])), parts[cut:]
        except ModuleNotFoundError:
            continue
    raise AssertionError(f"no module of {dotted!r} imports (not even {parts[0]!r})")


def _walk(obj: Any, steps: list[str], where: str) -> Any:
    for step in steps:
        called = step.endswith("()")
        name = step.removesuffix("()")
        assert hasattr(obj, name), f"{where}: {obj!r} has no attribute {name!r}"
        obj = getattr(obj, name)
        where = f"{where}.{step}"
        if called:
            assert callable(obj), f"{where}: not callable"
            if not isinstance(obj, type):
                # A factory (``io.Custom("X")``): what it returns is what the chain goes on from.
                obj = obj("SURFACE_TEST")
    return obj


def _split_chain(chain: str) -> list[str]:
    """``a.b().c`` → ``["a", "b()", "c"]``."""
    return chain.split(".")


@pytest.mark.parametrize("row", SYMBOLS, ids=[row["symbol"] for row in SYMBOLS])
def test_module_level_symbol(shims: Kernel, row: dict[str, str]) -> None:
    module_name, _, attr = row["symbol"].rpartition(".")
    if row["in_ref"] in ("no", "no module"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return  # what the pack's ``except ImportError`` expects of a missing fallback module
        assert hasattr(module, attr), f"{module_name} exists here but lacks the fallback name {attr!r}"
        return
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        pytest.fail(f"module {module_name} does not import: {exc}")
    assert hasattr(module, attr), f"{row['symbol']} is missing (used by {row['packs']} packs)"


A2 = [row for row in CHAINS if row["section"] == "a2" and row["chain"] not in INSTANCE_STATE]


@pytest.mark.parametrize("row", A2, ids=[row["chain"] for row in A2])
def test_attribute_chain(shims: Kernel, row: dict[str, str]) -> None:
    steps = _split_chain(row["chain"])
    plain = ".".join(s.removesuffix("()") for s in steps)
    fallback = next((m for m in FALLBACK_MODULES if plain.startswith(m + ".")), None)
    if fallback is not None:
        try:
            importlib.import_module(fallback)
        except ImportError:
            return  # a missing fallback module: its table (a) row checks the ImportError
        # A fallback's instances are built from a real text encoder; the class must be there and
        # callable, what its instances hold is the model's business.
        called = next((i for i, step in enumerate(steps) if step.endswith("()")), len(steps) - 1)
        steps = steps[: called + 1]
        plain = ".".join(s.removesuffix("()") for s in steps)
    module, rest = _import_longest(plain)
    # The names left after the module, with their "()" markers.
    _walk(module, steps[len(steps) - len(rest) :], module.__name__)


SERVER = [row for row in CHAINS if row["section"] == "b"]


@pytest.mark.parametrize("row", SERVER, ids=[row["chain"] for row in SERVER])
def test_prompt_server_instance_attribute(shims: Kernel, row: dict[str, str]) -> None:
    server = importlib.import_module("server")
    instance = server.PromptServer.instance
    assert instance is not None
    _walk(instance, _split_chain(row["chain"]), "PromptServer.instance")


OBJECTS = [
    row
    for row in CHAINS
    if row["section"] in ("MODEL", "CLIP", "VAE", "TWO_LEVEL") and row["on_class"] == "yes"
]


@pytest.fixture(scope="module")
def loaded(kernel: Kernel) -> dict[str, Any]:
    """MODEL, CLIP and VAE as the core CheckpointLoaderSimple hands them to a pack's node."""
    nodes = importlib.import_module("nodes")
    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(CHECKPOINT)
    return {"MODEL": model, "CLIP": clip, "VAE": vae}


@pytest.mark.parametrize("row", OBJECTS, ids=[row["chain"] for row in OBJECTS])
def test_model_clip_vae_attribute(shims: Kernel, loaded: dict[str, Any], row: dict[str, str]) -> None:
    steps = _split_chain(row["chain"])
    kind = steps[0]
    obj = loaded[kind]
    for step in steps[1:]:
        name = step.removesuffix("()")
        assert hasattr(obj, name), f"{kind} ({type(obj).__name__}) has no attribute {name!r} ({row['chain']})"
        obj = getattr(obj, name)
        if step.endswith("()"):
            assert callable(obj), f"{row['chain']}: {name} is not callable"
            break  # what a call returns depends on its arguments


def test_ksampler_instance_state(shims: Kernel, loaded: dict[str, Any]) -> None:
    """``comfy.samplers.KSampler(model, steps, device).sigmas.flip``: the schedule packs read."""
    samplers = importlib.import_module("comfy.samplers")
    sampler = samplers.KSampler(loaded["MODEL"], steps=4, device="cpu")
    assert sampler.sigmas.shape == (5,)
    assert callable(sampler.sigmas.flip)


def test_survey_tables_are_all_read() -> None:
    """The data files hold the survey's rows (a regenerated survey must not lose a table)."""
    assert len(SYMBOLS) == 204
    sections = {row["section"] for row in CHAINS}
    assert sections == {"a2", "b", "MODEL", "CLIP", "VAE", "TWO_LEVEL"}
