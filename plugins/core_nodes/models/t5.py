"""The T5 encoder (T5-XXL for Flux and SD3) and its single-file key layout.

The network is the T5 v1.1 encoder as transformers' ``T5EncoderModel`` computes it: a token
embedding (``shared``), pre-norm blocks of self-attention and a feed-forward, RMS layer norms
without a mean or bias, and a learned relative position bias computed by the first block and
shared by all. Attention is not scaled by ``1/sqrt(d)`` (T5 folds that into its weights).

Parameter names are the reference's ``t5xxl_fp16.safetensors`` layout, which is transformers' own
(``shared.weight``, ``encoder.block.N.layer.0.SelfAttention.q.weight``, ...
``encoder.final_layer_norm.weight``), so those files load as they are. Sizes are read from the
weights, so a test-sized encoder loads like the real one. Weighted layers are built through an
*operations* set (:mod:`.operations`), so fp8 storage can be cast per layer when it runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .operations import Operations, TorchOperations, cast_plain_weights, load_into

__all__ = [
    "T5_XXL",
    "T5Config",
    "T5Encoder",
    "build_t5",
    "config_from_state_dict",
    "is_t5_state_dict",
    "relative_position_bucket",
]

Activation = Literal["gelu_new", "relu"]


@dataclass(frozen=True)
class T5Config:
    vocab_size: int = 32128
    width: int = 4096
    head_dim: int = 64
    heads: int = 64
    ff_width: int = 10240
    layers: int = 24
    buckets: int = 32
    max_distance: int = 128
    # T5 v1.1 (T5-XXL of Flux / SD3): gated GELU (tanh form). The original T5: a plain ReLU MLP.
    activation: Activation = "gelu_new"
    gated: bool = True
    eps: float = 1e-6
    # Relative positions have no limit; kept for the text-encoder interface.
    max_positions: int = 1 << 30


# google/t5-v1_1-xxl's encoder: what the reference's t5xxl files hold.
T5_XXL = T5Config()


class T5LayerNorm(nn.Module):
    """RMS norm, computed in float32 (transformers' rule), the result in the weight's dtype when
    that is half precision."""

    def __init__(self, width: int, eps: float, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width, device=device, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


def relative_position_bucket(relative: torch.Tensor, buckets: int, max_distance: int) -> torch.Tensor:
    """Bidirectional buckets of ``key position - query position``: half the buckets per
    direction, exact below a quarter of them, logarithmic up to ``max_distance``."""
    half = buckets // 2
    out = (relative > 0).long() * half
    distance = relative.abs()
    exact = half // 2
    small = distance < exact
    far = exact + (
        torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)
    ).long()
    far = torch.clamp(far, max=half - 1)
    return out + torch.where(small, distance, far)


class T5Attention(nn.Module):
    def __init__(self, config: T5Config, has_bias: bool, ops: Operations, device: Any, dtype: Any) -> None:
        super().__init__()
        inner = config.heads * config.head_dim
        self.heads = config.heads
        self.config = config
        self.q = ops.Linear(config.width, inner, bias=False, device=device, dtype=dtype)
        self.k = ops.Linear(config.width, inner, bias=False, device=device, dtype=dtype)
        self.v = ops.Linear(config.width, inner, bias=False, device=device, dtype=dtype)
        self.o = ops.Linear(inner, config.width, bias=False, device=device, dtype=dtype)
        self.relative_attention_bias = (
            ops.Embedding(config.buckets, config.heads, device=device, dtype=dtype) if has_bias else None
        )

    def position_bias(self, length: int, device: torch.device) -> torch.Tensor:
        """``[1, heads, length, length]`` in float32."""
        assert self.relative_attention_bias is not None
        pos = torch.arange(length, dtype=torch.long, device=device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.config.buckets, self.config.max_distance)
        bias = self.relative_attention_bias(buckets).float()
        return bias.permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, -1).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        # Scores in float32 as transformers' softmax sees them; no 1/sqrt(d) scaling in T5.
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias, scale=1.0)
        return self.o(out.to(x.dtype).transpose(1, 2).reshape(b, n, -1))


class T5FeedForward(nn.Module):
    def __init__(self, config: T5Config, ops: Operations, device: Any, dtype: Any) -> None:
        super().__init__()
        self.gated = config.gated
        self.activation = config.activation
        if config.gated:
            self.wi_0 = ops.Linear(config.width, config.ff_width, bias=False, device=device, dtype=dtype)
            self.wi_1 = ops.Linear(config.width, config.ff_width, bias=False, device=device, dtype=dtype)
        else:
            self.wi = ops.Linear(config.width, config.ff_width, bias=False, device=device, dtype=dtype)
        self.wo = ops.Linear(config.ff_width, config.width, bias=False, device=device, dtype=dtype)

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh") if self.activation == "gelu_new" else F.relu(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._act(self.wi_0(x)) * self.wi_1(x) if self.gated else self._act(self.wi(x))
        return self.wo(h)


class _AttentionLayer(nn.Module):
    def __init__(self, config: T5Config, has_bias: bool, ops: Operations, device: Any, dtype: Any) -> None:
        super().__init__()
        self.SelfAttention = T5Attention(config, has_bias, ops, device, dtype)  # noqa: N815 - key layout
        self.layer_norm = T5LayerNorm(config.width, config.eps, device, dtype)


class _FeedForwardLayer(nn.Module):
    def __init__(self, config: T5Config, ops: Operations, device: Any, dtype: Any) -> None:
        super().__init__()
        self.DenseReluDense = T5FeedForward(config, ops, device, dtype)  # noqa: N815 - key layout
        self.layer_norm = T5LayerNorm(config.width, config.eps, device, dtype)


def _clamp_half(x: torch.Tensor) -> torch.Tensor:
    # fp16 activations of T5-XXL overflow; transformers clamps them just below the limit.
    if x.dtype == torch.float16:
        limit = torch.finfo(torch.float16).max - 1000
        return torch.clamp(x, -limit, limit)
    return x


class T5Block(nn.Module):
    def __init__(self, config: T5Config, has_bias: bool, ops: Operations, device: Any, dtype: Any) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            [_AttentionLayer(config, has_bias, ops, device, dtype), _FeedForwardLayer(config, ops, device, dtype)]
        )

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        attn, ff = self.layer[0], self.layer[1]
        x = _clamp_half(x + attn.SelfAttention(attn.layer_norm(x), bias))
        return _clamp_half(x + ff.DenseReluDense(ff.layer_norm(x)))


class T5Stack(nn.Module):
    def __init__(self, config: T5Config, ops: Operations, device: Any, dtype: Any) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            [T5Block(config, i == 0, ops, device, dtype) for i in range(config.layers)]
        )
        self.final_layer_norm = T5LayerNorm(config.width, config.eps, device, dtype)


@dataclass
class T5Output:
    """``last``: the final-normed last layer; ``hidden``: the asked layer's output (or None)."""

    last: torch.Tensor
    hidden: torch.Tensor | None


class T5Encoder(nn.Module):
    """The T5 encoder: token ids ``[B, N]`` -> hidden states ``[B, N, width]``."""

    def __init__(
        self,
        config: T5Config = T5_XXL,
        operations: Operations | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        ops = operations or TorchOperations
        self.config = config
        self.shared = ops.Embedding(config.vocab_size, config.width, device=device, dtype=dtype)
        self.encoder = T5Stack(config, ops, device, dtype)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype it computes in: the final norm's (a plain weight even with fp8 layers)."""
        return self.encoder.final_layer_norm.weight.dtype

    def forward(
        self,
        ids: torch.Tensor,
        embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        hidden_layer: int | None = None,
        norm_hidden: bool = True,
    ) -> T5Output:
        """``embeds`` (``[B, N, width]``) replace the token embeddings when given.
        ``attention_mask`` (``[B, N]``, 1 = attend) hides padding keys; ``hidden_layer`` (negative
        counts from the end) also returns that block's output, final-normed when ``norm_hidden``."""
        x = self.shared(ids) if embeds is None else embeds
        x = x.to(self.dtype)
        first = self.encoder.block[0].layer[0].SelfAttention
        bias = first.position_bias(x.shape[1], x.device)
        if attention_mask is not None:
            hide = (1.0 - attention_mask.to(torch.float32)).reshape(x.shape[0], 1, 1, -1)
            bias = bias + hide * torch.finfo(torch.float32).min
        wanted = None
        if hidden_layer is not None:
            wanted = hidden_layer % self.config.layers
        hidden = None
        for i, block in enumerate(self.encoder.block):
            x = block(x, bias)
            if i == wanted:
                hidden = x
        last = self.encoder.final_layer_norm(x)
        if hidden is not None and norm_hidden:
            hidden = self.encoder.final_layer_norm(hidden)
        return T5Output(last, hidden)


_BLOCK = "encoder.block."


def is_t5_state_dict(sd: Mapping[str, Any]) -> bool:
    """Whether ``sd`` holds a T5 encoder in the reference's (transformers') layout."""
    return "encoder.block.0.layer.0.SelfAttention.q.weight" in sd and "encoder.final_layer_norm.weight" in sd


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> T5Config:
    """Sizes from shapes: width from the final norm, heads from the position-bias table, head width
    from ``q``, the feed-forward kind from its weight names."""
    if not is_t5_state_dict(sd):
        raise ValueError("no T5 encoder weights (encoder.block.0.layer.0.SelfAttention.q.weight) found")
    layers = 1 + max(int(k[len(_BLOCK) :].split(".")[0]) for k in sd if k.startswith(_BLOCK))
    bias = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    buckets, heads = int(bias.shape[0]), int(bias.shape[1])
    inner = int(sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0])
    width = int(sd["encoder.final_layer_norm.weight"].shape[0])
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in sd
    ff_key = "encoder.block.0.layer.1.DenseReluDense." + ("wi_0.weight" if gated else "wi.weight")
    embed = sd.get("shared.weight", sd.get("encoder.embed_tokens.weight"))
    vocab = int(embed.shape[0]) if embed is not None else T5_XXL.vocab_size
    return T5Config(
        vocab_size=vocab,
        width=width,
        head_dim=inner // heads,
        heads=heads,
        ff_width=int(sd[ff_key].shape[0]),
        layers=layers,
        buckets=buckets,
        activation="gelu_new" if gated else "relu",
        gated=gated,
    )


def _own_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in sd.items() if k.startswith(("encoder.", "shared."))}
    # transformers' files also list the embedding tied under the encoder; ours is ``shared`` only.
    tied = out.pop("encoder.embed_tokens.weight", None)
    if "shared.weight" not in out and tied is not None:
        out["shared.weight"] = tied
    return out


def build_t5(
    sd: Mapping[str, torch.Tensor],
    dtype: torch.dtype | None = None,
    operations: Operations | None = None,
    config: T5Config | None = None,
) -> T5Encoder:
    """A :class:`T5Encoder` holding ``sd``'s tensors. Plain floating-point weights end up in
    ``dtype`` (default: the file's); a custom ``operations`` set's layers keep theirs."""
    weights = _own_keys(sd)
    config = config or config_from_state_dict(weights)
    with torch.device("meta"):
        model = T5Encoder(config, operations)
    load_into(model, weights, operations)
    target = dtype or weights["encoder.final_layer_norm.weight"].dtype
    if not target.is_floating_point or target.itemsize < 2:
        target = torch.float32
    cast_plain_weights(model, target) if operations is None else _cast_norms(model, target)
    return model.eval()


def _cast_norms(model: T5Encoder, dtype: torch.dtype) -> None:
    # With a caller's layer set only the norms (plain parameters) follow the compute dtype.
    for module in model.modules():
        if isinstance(module, T5LayerNorm):
            module.weight = nn.Parameter(module.weight.detach().to(dtype), requires_grad=False)


def token_rows(rows: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    """Rows of token ids as a ``long`` tensor (rows must be equally long)."""
    lengths = {len(r) for r in rows}
    if len(lengths) > 1:
        raise ValueError(f"token rows of one batch must be equally long, got lengths {sorted(lengths)}")
    return torch.tensor([list(r) for r in rows], dtype=torch.long, device=device)


@dataclass
class T5TextEncoder:
    """A T5 encoder as a text-encoder stack member (the interface of ``text_encoder.ClipEncoder``):
    the reference's ``SDClipModel`` around T5 with layer "last", no pooled output, and padding
    seen by attention unless ``attention_mask`` is set (Flux and SD3 leave it off)."""

    model: T5Encoder
    default_layer: int | None = None
    norm_hidden: bool = True
    pad_token: int = 0
    end_token: int = 1
    attention_mask: bool = False
    layer: int | None = None
    project_pooled: bool = False

    def __post_init__(self) -> None:
        self.layer = self.default_layer

    def set_layer(self, layer: int | None) -> None:
        # Clip skip does not apply to T5 (the reference's T5 members keep "last" too).
        self.layer = self.default_layer

    @torch.no_grad()
    def forward_rows(self, rows: Sequence[Sequence[Any]]) -> tuple[torch.Tensor, None]:
        """Rows of token ids -> ``(z [rows, tokens, width] float32, None)``, unweighted."""
        if len(rows) == 0:
            raise ValueError("no token rows to encode")
        device = self.model.encoder.final_layer_norm.weight.device
        ids = token_rows([[int(t) for t in (r.tolist() if isinstance(r, torch.Tensor) else r)] for r in rows], device)
        mask = None
        if self.attention_mask:
            # Everything up to and including each row's first end token takes part.
            ends = (ids == self.end_token).int().cumsum(1)
            mask = ((ends == 0) | ((ends == 1) & (ids == self.end_token))).to(torch.float32)
        out = self.model(ids, attention_mask=mask, hidden_layer=self.layer, norm_hidden=self.norm_hidden)
        z = out.last if self.layer is None or out.hidden is None else out.hidden
        return z.float(), None

    @torch.no_grad()
    def encode(self, chunks: Sequence[Sequence[tuple[Any, ...]]]) -> tuple[torch.Tensor, None]:
        """``(cond [1, tokens * chunks, width], None)``: a weight ``w`` moves a token's output
        from the empty prompt's (``</s>`` then padding) at that position by ``w``."""
        weighted = any(w != 1.0 for chunk in chunks for _, w, *_ in chunk)
        rows: list[list[Any]] = [[t for t, *_ in chunk] for chunk in chunks]
        if weighted:
            length = max(len(chunk) for chunk in chunks)
            rows.append([self.end_token] + [self.pad_token] * (length - 1))
        z, _ = self.forward_rows(rows)
        if weighted:
            empty, z = z[-1], z[:-1].clone()
            weights = torch.tensor(
                [[w for _, w, *_ in chunk][: z.shape[1]] for chunk in chunks], dtype=z.dtype, device=z.device
            ).unsqueeze(-1)
            z = torch.where(weights != 1.0, empty + (z - empty) * weights, z)
        return z.reshape(1, -1, z.shape[-1]), None
