"""A CLIP's ``cond_stage_model`` / ``tokenizer`` / ``patcher`` and a VAE's reference attributes.

On the tiny SD1 / SDXL checkpoints of the end-to-end tests: the objects have the reference's
layout and keys, encode exactly as the CLIP does at the same layer and patches, and every change
(clip options, weight patches) stays with the CLIP it was made on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from plugins.core_nodes.models import adapters
from plugins.core_nodes.models.clip_objects import split_key
from plugins.core_nodes.models.patcher import ModelPatcher

from .test_workflows_e2e import checkpoints, lora_file  # noqa: F401  (fixtures)

PROMPT = "a (glass bottle:1.3) on a beach, sunset"
FC1 = "clip_{}.transformer.text_model.encoder.layers.0.mlp.fc1.weight"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def loaded(checkpoints: dict[str, Path]) -> dict[str, tuple[Any, Any, Any]]:  # noqa: F811
    return {family: adapters.load_checkpoint(path) for family, path in checkpoints.items()}


def _pairs(clip: Any, text: str = PROMPT) -> dict[str, Any]:
    return clip.tokenizer.tokenize_with_weights(text)


def test_cond_stage_model_has_the_reference_layout_and_keys(loaded: dict[str, Any]) -> None:
    sd1, sdxl = loaded["sd1"][1], loaded["sdxl"][1]
    keys = set(sd1.cond_stage_model.state_dict())
    assert "clip_l.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert FC1.format("l") in keys and all(k.startswith("clip_l.transformer.text_model.") for k in keys)
    assert sd1.cond_stage_model.clip_name == "l" and sd1.cond_stage_model.clip == "clip_l"
    # The reference's class names (smZNodes looks for "SDXL" in the name).
    assert type(sd1.cond_stage_model).__name__ == "SD1ClipModel"
    assert type(sdxl.cond_stage_model).__name__ == "SDXLClipModel"
    xl = set(sdxl.cond_stage_model.state_dict())
    assert {FC1.format("l"), FC1.format("g"), "clip_g.transformer.text_model.text_projection.weight"} <= xl
    # The network is the CLIP's own (shared, not copied).
    assert sdxl.cond_stage_model.clip_g.transformer.text_model is sdxl.models["g"]
    assert sdxl.get_sd().keys() == xl
    assert sdxl.cond_stage_model.device == torch.device("cpu") and "device" not in vars(sdxl.cond_stage_model)
    assert split_key("clip_g.transformer.text_projection.weight") == ("g", "text_projection.weight")
    assert split_key(FC1.format("l")) == ("l", "encoder.layers.0.mlp.fc1.weight")
    assert split_key("model.diffusion_model.x") is None


def test_encode_token_weights_is_the_clip_encoding(loaded: dict[str, Any]) -> None:
    for family in ("sd1", "sdxl"):
        clip = loaded[family][1]
        tokens = _pairs(clip)
        assert tokens.keys() == clip.tokenize(PROMPT).keys()
        cond, pooled = clip.encode(PROMPT)
        got, got_pooled = clip.cond_stage_model.encode_token_weights(tokens)
        assert torch.equal(got, cond) and torch.equal(got_pooled, pooled)
        first = clip.cond_stage_model.members()[0]
        alone, _ = first.encode_token_weights(tokens[first.name])
        assert torch.equal(alone, cond[..., : alone.shape[-1]])


def test_clip_options_pick_the_layer_and_reset(loaded: dict[str, Any]) -> None:
    for family, default, other in (("sd1", ("last", None), -2), ("sdxl", ("hidden", -2), -1)):
        clip = loaded[family][1].clone()
        model = clip.cond_stage_model
        member = model.members()[0]
        assert (member.layer, member.layer_idx) == default
        model.set_clip_options({"layer": other})
        assert (member.layer, member.layer_idx) == ("hidden", other)
        skipped = clip.clone()
        skipped.clip_layer(other)
        assert torch.equal(model.encode_token_weights(_pairs(clip))[0], skipped.encode(PROMPT)[0])
        assert not torch.equal(skipped.encode(PROMPT)[0], clip.encode(PROMPT)[0])
        model.set_clip_options({"layer": -99})  # deeper than the model: the last layer
        assert member.layer == "last"
        model.reset_clip_options()
        assert (member.layer, member.layer_idx) == default
        assert torch.equal(model.encode_token_weights(_pairs(clip))[0], clip.encode(PROMPT)[0])


def test_clone_has_its_own_patches_layer_and_options(loaded: dict[str, Any]) -> None:
    clip = loaded["sdxl"][1]
    before = clip.encode(PROMPT)
    twin = clip.clone()
    assert twin.cond_stage_model is not clip.cond_stage_model
    assert twin.patcher is not clip.patcher and twin.patcher.model is twin.cond_stage_model
    assert isinstance(twin.patcher, ModelPatcher) and twin.patcher.is_clip
    weight = twin.get_key_patches()[FC1.format("g")][0][0]
    added = twin.add_patches({FC1.format("g"): (torch.full_like(weight, 0.1),), "clip_x.nothing": (weight,)})
    assert added == [FC1.format("g")]
    assert not clip.patcher.patches and list(twin.patcher.patches) == [FC1.format("g")]
    twin.cond_stage_model.set_clip_options({"layer": -1})
    assert clip.cond_stage_model.clip_g.layer_idx == -2
    changed = twin.encode(PROMPT)
    assert not torch.equal(changed[0], before[0]) and not torch.equal(changed[1], before[1])
    # The original encodes as before and the shared network was never written.
    assert torch.equal(clip.encode(PROMPT)[0], before[0])
    assert torch.equal(clip.models["g"].encoder.layers[0].mlp.fc1.weight, weight)
    # cond_stage_model encodes through its own CLIP's patches.
    via_model = twin.cond_stage_model.clip_g.encode_token_weights(_pairs(twin)["g"])
    plain = clip.cond_stage_model.clip_g.encode_token_weights(_pairs(clip)["g"])
    assert not torch.equal(via_model[1], plain[1]) and torch.equal(via_model[1], changed[1])
    twin.set_tokenizer_option("clip_l_min_length", 100)
    assert twin.get_tokenizer_options() == {"clip_l_min_length": 100} and clip.get_tokenizer_options() == {}
    # A clone of the patched clone keeps its patches and options.
    again = twin.clone()
    assert again.cond_stage_model.clip_g.layer_idx == -1 and torch.equal(again.encode(PROMPT)[0], changed[0])


def test_projection_key_in_the_reference_spelling(loaded: dict[str, Any]) -> None:
    clip = loaded["sdxl"][1].clone()
    key = "clip_g.transformer.text_projection.weight"
    weight = clip.models["g"].text_projection.weight
    assert clip.add_patches({key: (torch.full_like(weight, 0.2),)}) == [key]
    before = loaded["sdxl"][1].encode(PROMPT)
    cond, pooled = clip.encode(PROMPT)
    assert torch.equal(cond, before[0]) and not torch.equal(pooled, before[1])


def test_lora_lands_in_the_patcher_by_reference_keys(loaded: dict[str, Any], lora_file: Path) -> None:  # noqa: F811
    model, clip, _ = loaded["sd1"]
    _, patched = adapters.apply_lora(model, clip, lora_file, 1.0, 0.5)
    assert patched is not None and not clip.patcher.patches
    (key,) = patched.patcher.patches
    assert key == "clip_l.transformer.text_model.encoder.layers.1.mlp.fc2.weight"
    (entry,) = patched.patcher.patches[key]
    assert entry[0] == 0.5
    assert patched.patches == {"l": {"encoder.layers.1.mlp.fc2.weight": ((0.5, entry[1]),)}}


def test_tokenizer_objects(loaded: dict[str, Any]) -> None:
    sd1, sdxl = loaded["sd1"][1], loaded["sdxl"][1]
    assert sd1.tokenizer.clip_name == "l" and sd1.tokenizer.clip_l.pad_with_end
    assert sdxl.tokenizer.clip_l.pad_with_end and not sdxl.tokenizer.clip_g.pad_with_end
    # Word ids as the reference's current tokenizer numbers them: one per weighted segment.
    chunks = sd1.tokenizer.clip_l.tokenize_with_weights("a (cat:1.2)", return_word_ids=True)
    assert chunks[0][:3] == [(49406, 1.0, 0), (320, 1.0, 1), (2368, 1.2, 2)]
    words = sd1.tokenizer.untokenize(chunks[0][:3])
    assert [w for _, w in words] == ["<|startoftext|>", "a</w>", "cat</w>"]
    assert sdxl.tokenizer.tokenize_with_weights(PROMPT) == sdxl.tokenize(PROMPT)
    # clip.tokenizer.clip_l.tokenizer is called like the reference's transformers tokenizer.
    assert sd1.tokenizer.clip_l.tokenizer("a cat")["input_ids"] == [49406, 320, 2368, 49407]
    assert sdxl.tokenizer.clip_g.tokenizer(["a", "cat"])["input_ids"] == [[49406, 320, 49407], [49406, 2368, 49407]]


def test_vae_reference_attributes(loaded: dict[str, Any]) -> None:
    vae = loaded["sd1"][2]
    model = vae.first_stage_model
    assert model is vae.vae.model and isinstance(model, torch.nn.Module)
    assert vae.patcher.model is model and vae.patcher is vae.patcher
    assert "device" not in vars(model) and model.device == torch.device("cpu")  # nothing written on it
    assert vae.get_sd().keys() == model.state_dict().keys() and "decoder.conv_out.weight" in vae.get_sd()
    assert vae.device == torch.device("cpu") and vae.vae_dtype == torch.float32
    assert (vae.output_channels, vae.latent_channels, vae.latent_dim) == (3, 4, 2)
    assert vae.memory_used_decode((1, 4, 8, 8), torch.float16) == 2178 * 64 * 64 * 2
    assert vae.memory_used_encode((1, 3, 64, 64), torch.float32) == 1767 * 64 * 64 * 4
    image = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(vae.process_input(image), torch.tensor([-1.0, -0.5, 1.0]))
    assert torch.equal(vae.process_output(torch.tensor([-2.0, 0.0, 3.0])), torch.tensor([0.0, 0.5, 1.0]))
    latent = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        by_hand = vae.process_output(model.decode(latent)).movedim(1, -1)
    torch.testing.assert_close(vae.decode(latent, vae_options={}), by_hand)


def test_a_packs_own_cond_stage_model_and_tokenizer_are_used(loaded: dict[str, Any]) -> None:
    clip = loaded["sd1"][1].clone()
    cond, pooled = clip.encode(PROMPT)
    original = clip.cond_stage_model.encode_token_weights
    seen: list[Any] = []

    def doubled(tokens: Any) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(clip.cond_stage_model.clip_l.layer_idx)
        out, pooled_out = original(tokens)
        return out * 2, pooled_out

    clip.cond_stage_model.encode_token_weights = doubled
    clip.clip_layer(-2)
    twin = clip.clone()
    assert twin.cond_stage_model is clip.cond_stage_model  # shared, as the reference's
    skipped = loaded["sd1"][1].clone()
    skipped.clip_layer(-2)
    assert torch.equal(twin.encode_from_tokens(twin.tokenize(PROMPT)), skipped.encode(PROMPT)[0] * 2)
    assert seen == [-2]
    assert torch.equal(loaded["sd1"][1].encode(PROMPT)[0], cond)

    class Fixed:
        def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs: Any) -> Any:
            return {"l": loaded["sd1"][1].tokenize("a red fox")["l"]}

    other = loaded["sd1"][1].clone()
    other.tokenizer = Fixed()
    assert torch.equal(other.encode(PROMPT)[0], loaded["sd1"][1].encode("a red fox")[0])
    assert pooled is not None
