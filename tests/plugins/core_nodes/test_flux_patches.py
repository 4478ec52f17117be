"""Patch points inside the Flux transformer, each against the forward pass written out with the same
change made by hand: ``post_input`` patches, ``patches_replace["dit"]`` double / single block
replacements, ``double_block`` patches ignored (as the reference's Flux does), ControlNet ``input`` / ``output`` residuals, the
``transformer_options`` the blocks see, ``DIFFUSION_MODEL`` wrappers, and the same patches set on a
MODEL through the ModelPatcher setters reaching the transformer during sampling calls.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.flux import (
    FluxTransformer,
    build_flux,
    position_embedding,
    timestep_embedding,
)

from .flux_reference import tiny_flux_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Tokens = torch.Tensor


def _inputs(batch: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(batch, 16, 6, 8, generator=g)
    ctx = torch.randn(batch, 5, 32, generator=g)
    y = torch.randn(batch, 24, generator=g)
    return x, torch.tensor([0.8, 0.4])[:batch], ctx, y, torch.tensor([3.5, 2.5])[:batch]


def _written_out(
    net: FluxTransformer,
    x: torch.Tensor,
    t: torch.Tensor,
    ctx: torch.Tensor,
    y: torch.Tensor,
    guidance: torch.Tensor,
    post_input: Callable[[Tokens, Tokens, Tokens, Tokens], tuple[Tokens, ...]] | None = None,
    after_double: Callable[[int, Tokens, Tokens], tuple[Tokens, Tokens]] | None = None,
    single_block: Callable[[int, Tokens, Callable[[Tokens], Tokens]], Tokens] | None = None,
    after_single: Callable[[int, Tokens, int], Tokens] | None = None,
) -> torch.Tensor:
    """The Flux forward pass, step by step, with the given changes at the same places."""
    b, c, h, w = x.shape
    img = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
    img_ids = torch.zeros(h // 2, w // 2, 3)
    img_ids[..., 1] = torch.arange(h // 2)[:, None]
    img_ids[..., 2] = torch.arange(w // 2)[None, :]
    img_ids = img_ids.reshape(1, -1, 3).expand(b, -1, -1)
    txt_ids = torch.zeros(b, ctx.shape[1], 3)
    img = net.img_in(img)
    vec = net.time_in(timestep_embedding(t, 256)) + net.guidance_in(timestep_embedding(guidance, 256))
    vec = vec + net.vector_in(y)
    txt = net.txt_in(ctx)
    if post_input is not None:
        img, txt, img_ids, txt_ids = post_input(img, txt, img_ids, txt_ids)
    pe = position_embedding(torch.cat((txt_ids, img_ids), 1), net.config.axes_dim, net.config.theta)
    for i, block in enumerate(net.double_blocks):
        img, txt = block(img, txt, vec, pe)
        if after_double is not None:
            img, txt = after_double(i, img, txt)
    n_txt = txt.shape[1]
    joined = torch.cat((txt, img), 1)
    for i, single in enumerate(net.single_blocks):
        run = lambda tokens, single=single: single(tokens, vec, pe)  # noqa: E731
        joined = single_block(i, joined, run) if single_block is not None else run(joined)
        if after_single is not None:
            joined = after_single(i, joined, n_txt)
    out = net.final_layer(joined[:, n_txt:], vec)
    return out.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


@pytest.fixture(scope="module")
def net() -> FluxTransformer:
    return build_flux(tiny_flux_weights(seed=4))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@torch.no_grad()
def test_without_patches_the_written_out_pass_is_the_network(net: FluxTransformer) -> None:
    x, t, ctx, y, g = _inputs()
    _close(net(x, t, ctx, y, g), _written_out(net, x, t, ctx, y, g))


@torch.no_grad()
def test_post_input_patch_changes_tokens_and_positions(net: FluxTransformer) -> None:
    x, t, ctx, y, g = _inputs()
    seen: list[set[str]] = []

    def patch(args: dict[str, Any]) -> dict[str, Any]:
        seen.append(set(args))
        # A reference image's tokens appended with shifted positions (what Kontext-style patches do).
        extra = args["img"][:, :3] * 0.5
        extra_ids = args["img_ids"][:, :3] + torch.tensor([1.0, 0.0, 0.0])
        return {"img": torch.cat((args["img"], extra), 1), "txt": args["txt"] + 0.1,
                "img_ids": torch.cat((args["img_ids"], extra_ids), 1), "txt_ids": args["txt_ids"]}  # fmt: skip

    options = {"patches": {"post_input": [patch]}}
    got_tokens = net.forward_tokens(*_tokens(net, x), ctx, torch.zeros(2, 5, 3), t, y, g, None, options)
    assert seen == [{"img", "txt", "img_ids", "txt_ids", "transformer_options"}]
    assert got_tokens.shape[1] == 12 + 3  # the appended tokens come out too, as in the reference

    def by_hand(img: Tokens, txt: Tokens, img_ids: Tokens, txt_ids: Tokens) -> tuple[Tokens, ...]:
        extra_ids = img_ids[:, :3] + torch.tensor([1.0, 0.0, 0.0])
        return torch.cat((img, img[:, :3] * 0.5), 1), txt + 0.1, torch.cat((img_ids, extra_ids), 1), txt_ids

    expected = _written_out_tokens(net, x, t, ctx, y, g, by_hand)
    _close(got_tokens, expected)
    # Through forward the appended tokens are dropped: the latent's own tokens come back.
    got = net(x, t, ctx, y, g, transformer_options=options)
    b, c, h, w = x.shape
    own = expected[:, :12].reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(x.shape)
    _close(got, own)


def _tokens(net: FluxTransformer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b, c, h, w = x.shape
    img = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return img, ids.reshape(1, -1, 3).expand(b, -1, -1)


def _written_out_tokens(net: FluxTransformer, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, y: torch.Tensor,
                        g: torch.Tensor, post: Callable[..., tuple[Tokens, ...]]) -> torch.Tensor:  # fmt: skip
    """:func:`_written_out` up to the final layer's tokens (no unpatchify: the token count changed)."""
    img, img_ids = _tokens(net, x)
    img = net.img_in(img)
    vec = net.time_in(timestep_embedding(t, 256)) + net.guidance_in(timestep_embedding(g, 256)) + net.vector_in(y)
    img, txt, img_ids, txt_ids = post(img, net.txt_in(ctx), img_ids, torch.zeros(x.shape[0], ctx.shape[1], 3))
    pe = position_embedding(torch.cat((txt_ids, img_ids), 1), net.config.axes_dim, net.config.theta)
    for block in net.double_blocks:
        img, txt = block(img, txt, vec, pe)
    joined = torch.cat((txt, img), 1)
    for single in net.single_blocks:
        joined = single(joined, vec, pe)
    return net.final_layer(joined[:, txt.shape[1] :], vec)


@torch.no_grad()
def test_block_replacements_see_the_reference_arguments(net: FluxTransformer) -> None:
    x, t, ctx, y, g = _inputs()
    calls: list[tuple[str, int, str, int, int]] = []

    def replace_double(args: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        opts = args["transformer_options"]
        calls.append(("double", opts["block_index"], opts["block_type"], opts["total_blocks"], -1))
        assert set(args) == {"img", "txt", "vec", "pe", "attn_mask", "transformer_options"}
        out = extra["original_block"](args)
        return {"img": out["img"] * 0.5, "txt": out["txt"] + 1.0}

    def replace_single(args: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        opts = args["transformer_options"]
        calls.append(("single", opts["block_index"], opts["block_type"], opts["total_blocks"], opts["img_slice"][0]))
        return {"img": args["img"]}  # the block skipped

    caller = {"patches_replace": {"dit": {("double_block", 1): replace_double, ("single_block", 0): replace_single}}}
    got = net(x, t, ctx, y, g, transformer_options=caller)
    assert calls == [("double", 1, "double", 2, -1), ("single", 0, "single", 2, 5)]
    assert set(caller) == {"patches_replace"}  # the caller's options are not written into

    def after_double(i: int, img: Tokens, txt: Tokens) -> tuple[Tokens, Tokens]:
        return (img * 0.5, txt + 1.0) if i == 1 else (img, txt)

    def single(i: int, tokens: Tokens, run: Callable[[Tokens], Tokens]) -> Tokens:
        return tokens if i == 0 else run(tokens)

    _close(got, _written_out(net, x, t, ctx, y, g, after_double=after_double, single_block=single))
    assert (got - net(x, t, ctx, y, g)).abs().max() > 1e-2


@torch.no_grad()
def test_double_block_patches_are_ignored_and_control_residuals_added(net: FluxTransformer) -> None:
    x, t, ctx, y, g = _inputs()
    gen = torch.Generator().manual_seed(1)
    # Residuals for the first image tokens only (a ControlNet's may be shorter), one None.
    control = {
        "input": [torch.randn(2, 12, 32, generator=gen), None],
        "output": [None, torch.randn(2, 7, 32, generator=gen)],
    }
    indices: list[int] = []

    def double_patch(args: dict[str, Any]) -> dict[str, Any]:
        indices.append(args["block_index"])
        assert args["x"] is x
        return {"img": args["img"], "txt": args["txt"] * 0.9}

    options = {"patches": {"double_block": [double_patch]}}
    got = net(x, t, ctx, y, g, control=control, transformer_options=options)
    # The reference's Flux never calls "double_block" patches (its Qwen-Image DiT does).
    assert indices == []

    def after_double(i: int, img: Tokens, txt: Tokens) -> tuple[Tokens, Tokens]:
        add = control["input"][i]
        if add is not None:
            img = img.clone()
            img[:, : add.shape[1]] += add
        return img, txt

    def after_single(i: int, tokens: Tokens, n_txt: int) -> Tokens:
        add = control["output"][i]
        if add is not None:
            tokens = tokens.clone()
            tokens[:, n_txt : n_txt + add.shape[1]] += add
        return tokens

    _close(got, _written_out(net, x, t, ctx, y, g, after_double=after_double, after_single=after_single))


@torch.no_grad()
def test_diffusion_model_wrapper_surrounds_the_call(net: FluxTransformer) -> None:
    from plugins.core_nodes.models.extension import WrappersMP

    x, t, ctx, y, g = _inputs()

    def wrapper(executor: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        return executor(*args, **kwargs) * 2.0

    options = {"wrappers": {WrappersMP.DIFFUSION_MODEL: {"test": [wrapper]}}}
    _close(net(x, t, ctx, y, g, transformer_options=options), 2.0 * net(x, t, ctx, y, g))


def test_patches_set_on_a_model_reach_the_transformer(tmp_path: Path) -> None:
    """set_model_double_block_patch / set_model_post_input_patch / set_model_patch_replace on a
    MODEL clone take effect when the MODEL denoises; the original MODEL is unchanged."""
    from dataclasses import replace

    from .flux_reference import TINY

    config = replace(TINY, vec_in_dim=24)
    save_file(tiny_flux_weights(config, seed=4), str(tmp_path / "flux.safetensors"))
    model = adapters.load_unet(tmp_path / "flux.safetensors")
    x, _, ctx, y, _ = _inputs(1)
    cond = {"c_crossattn": ctx, "y": y, "guidance": torch.tensor([3.5])}
    sigma = torch.tensor([0.6])
    seen: list[str] = []

    def post(args: dict[str, Any]) -> dict[str, Any]:
        seen.append("post_input")
        return {**args, "txt": args["txt"] * 0.0}

    def double(args: dict[str, Any]) -> dict[str, Any]:
        seen.append(f"double_block {args['block_index']}")
        return {"img": args["img"], "txt": args["txt"]}

    def skip(args: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        seen.append("single_block 1 replaced")
        return {"img": args["img"]}

    patched = model.clone()
    patched.set_model_post_input_patch(post)
    patched.set_model_double_block_patch(double)
    patched.set_model_patch_replace(skip, "dit", "single_block", 1)
    with torch.no_grad():
        plain = model(x, sigma, dict(cond))
        got = patched(x, sigma, dict(cond))
    assert seen == ["post_input", "single_block 1 replaced"]
    # The same changes by hand: text tokens zeroed after embedding, the last single block skipped.
    net = model.unet
    timestep = model.model_sampling.timestep(sigma).float()
    with torch.no_grad():
        velocity = _written_out(
            net, model.model_sampling.calculate_input(sigma, x), timestep, ctx, y, torch.tensor([3.5]),
            post_input=lambda img, txt, a, b: (img, txt * 0.0, a, b),
            single_block=lambda i, tokens, run: tokens if i == 1 else run(tokens),
        )  # fmt: skip
    _close(got, x - sigma * velocity)
    assert (got - plain).abs().max() > 1e-2
    with torch.no_grad():
        assert torch.equal(model(x, sigma, dict(cond)), plain)
