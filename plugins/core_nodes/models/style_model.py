"""Style models: a CLIP vision encoding turned into extra conditioning tokens.

Two kinds, told apart by their keys as the reference does:

* the T2I-Adapter *style* adapter (``style_embedding``, ``transformer_layes.N``, ``ln_pre``,
  ``ln_post``, ``proj``): learned style tokens appended to the vision tokens, three transformer
  layers (OpenCLIP's residual attention blocks, QuickGELU), the style tokens' outputs projected
  to the text width (SD1: 8 tokens of 768);
* Flux Redux (``redux_up``, ``redux_down``): each SigLIP token through an up-projection, SiLU and
  a down-projection to Flux's text width.

Both read ``clip_vision_output.last_hidden_state``. Sizes come from the weights (the style
adapter's head count, which the weights cannot tell, is the reference's 8).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

STYLE_HEADS = 8


class StyleModelError(ValueError):
    """A style-model file this server cannot use."""


class _LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input's dtype (half inputs stay stable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):
    """A pre-norm residual attention block (names as OpenCLIP's: attn, ln_1, mlp.c_fc/c_proj, ln_2)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = _LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 4))
        self.mlp.add_module("gelu", _QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(width * 4, width))
        self.ln_2 = _LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class StyleAdapter(nn.Module):
    """T2I-Adapter's style model: vision tokens ``[B, N, width]`` -> ``[B, tokens, context_dim]``."""

    def __init__(self, width: int, context_dim: int, heads: int, layers: int, tokens: int) -> None:
        super().__init__()
        self.num_token = tokens
        # The file's name for the layers (a typo kept for the weights' sake).
        self.transformer_layes = nn.Sequential(*(_Block(width, heads) for _ in range(layers)))
        self.style_embedding = nn.Parameter(torch.zeros(1, tokens, width))
        self.ln_pre = _LayerNorm(width)
        self.ln_post = _LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, context_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        style = self.style_embedding.to(x.dtype).expand(x.shape[0], -1, -1)
        x = self.transformer_layes(self.ln_pre(torch.cat([x, style], dim=1)))
        return self.ln_post(x[:, -self.num_token :]) @ self.proj.to(x.dtype)


class ReduxImageEncoder(nn.Module):
    """Flux Redux: SigLIP tokens ``[B, N, vision]`` -> ``[B, N, text]``."""

    def __init__(self, vision_dim: int, hidden: int, text_dim: int) -> None:
        super().__init__()
        self.redux_up = nn.Linear(vision_dim, hidden)
        self.redux_down = nn.Linear(hidden, text_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.redux_down(F.silu(self.redux_up(x)))


class StyleModel:
    """The STYLE_MODEL value (the reference's ``comfy.sd.StyleModel``)."""

    def __init__(self, model: nn.Module, device: Any = "cpu") -> None:
        self.model = model

    def get_cond(self, input: Any) -> torch.Tensor:  # noqa: A002 - the reference's parameter name
        """The conditioning tokens for a CLIP vision output."""
        from plugins.core_nodes.models import adapters

        tokens = input.last_hidden_state
        with adapters._using(adapters._manager(), [self.model]) as device:
            param = next(self.model.parameters())
            out = self.model(tokens.to(device, param.dtype))
        return out.to(tokens.device, torch.float32)


def _layers(sd: Mapping[str, torch.Tensor]) -> int:
    n = 0
    while f"transformer_layes.{n}.ln_1.weight" in sd:
        n += 1
    return n


def build_style_model(sd: Mapping[str, torch.Tensor], name: str = "the style model") -> nn.Module:
    """The network a style-model state dict holds (``name`` is what errors call it)."""
    if "style_embedding" in sd:
        _, tokens, width = sd["style_embedding"].shape
        if "proj" not in sd:
            raise StyleModelError(f"{name}: the style adapter has no output projection (proj)")
        if width % STYLE_HEADS:
            raise StyleModelError(f"{name}: a style adapter {width} wide does not split into {STYLE_HEADS} heads")
        model: nn.Module = StyleAdapter(width, sd["proj"].shape[1], STYLE_HEADS, _layers(sd), tokens)
    elif "redux_down.weight" in sd and "redux_up.weight" in sd:
        hidden, vision = sd["redux_up.weight"].shape
        model = ReduxImageEncoder(vision, hidden, sd["redux_down.weight"].shape[0])
    else:
        raise StyleModelError(f"{name} is not a style model this server knows (T2I style adapter or Flux Redux)")
    try:
        model.load_state_dict(dict(sd), strict=True)
    except RuntimeError as e:
        raise StyleModelError(f"{name} has weights that do not fit ({str(e).splitlines()[0][:300]})") from None
    return model.eval()


def load_style_model(path: Any) -> StyleModel:
    """StyleModelLoader: the file's network (cached by the model manager, on the compute dtype)."""
    from collections.abc import Callable
    from pathlib import Path

    from plugins.core_nodes.models import adapters
    from plugins.core_nodes.models.checkpoint import load_state_dict

    dtype = adapters._compute_dtype(adapters._manager())

    def loader(file: Path, check: Callable[[], None]) -> nn.Module:
        sd, _ = load_state_dict(file, check)
        model = build_style_model(sd, file.name)
        return model.to(dtype) if dtype is not None else model

    return StyleModel(adapters._load("style_model", Path(path), loader))


__all__ = [
    "ReduxImageEncoder",
    "StyleAdapter",
    "StyleModel",
    "StyleModelError",
    "build_style_model",
    "load_style_model",
]
