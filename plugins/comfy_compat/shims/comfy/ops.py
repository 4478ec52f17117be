"""``comfy.ops``: torch layers that skip weight init and can cast their weights per call.

``disable_weight_init.<Layer>`` is the torch layer without the random initialisation (weights come
from a state dict anyway). ``manual_cast.<Layer>`` also sets ``comfy_cast_weights``, so each
forward casts weight and bias to the input's dtype and device first, which lets fp16 weights run
against fp32 activations on the CPU. Packs subclass these (GGUF overrides
``forward_comfy_cast_weights``; others append to ``weight_function`` / ``bias_function``), so the
dispatch below follows the reference exactly: ``forward`` goes to ``forward_comfy_cast_weights``
when ``comfy_cast_weights`` is set or a weight/bias function is present.

Casting happens on the current stream; there are no offload streams, so the third item
:func:`cast_bias_weight` gives with ``offloadable=True`` is a tuple :func:`uncast_bias_weight`
accepts and ignores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import comfy.model_management
import torch
import torch.nn.functional as F

cast_to = comfy.model_management.cast_to


def run_every_op() -> None:
    """Each layer call is an interruption point, as in the reference."""
    if not torch.compiler.is_compiling():
        comfy.model_management.throw_exception_if_processing_interrupted()


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, *args, **kwargs)


def cast_to_input(weight: torch.Tensor, input: torch.Tensor, non_blocking: bool = False, copy: bool = True) -> torch.Tensor:  # noqa: A002
    return cast_to(weight, input.dtype, input.device, non_blocking=non_blocking, copy=copy)


def cast_bias_weight(
    s: torch.nn.Module,
    input: torch.Tensor | None = None,  # noqa: A002 - the reference's keyword
    dtype: torch.dtype | None = None,
    device: Any = None,
    bias_dtype: torch.dtype | None = None,
    offloadable: bool = False,
    compute_dtype: torch.dtype | None = None,
    want_requant: bool = False,
) -> tuple[Any, ...]:
    """``s.weight`` / ``s.bias`` cast to ``dtype`` / ``bias_dtype`` on ``device`` (defaults: the
    input's), with ``s.weight_function`` / ``s.bias_function`` applied in order.

    Returns ``(weight, bias)``, or ``(weight, bias, offload_stream)`` with ``offloadable=True``;
    hand the latter to :func:`uncast_bias_weight` after the last use.
    """
    if input is not None:
        dtype = input.dtype if dtype is None else dtype
        bias_dtype = dtype if bias_dtype is None else bias_dtype
        device = input.device if device is None else device
    non_blocking = comfy.model_management.device_supports_non_blocking(device)
    weight_functions: list[Callable[[torch.Tensor], torch.Tensor]] = list(getattr(s, "weight_function", []))
    bias_functions: list[Callable[[torch.Tensor], torch.Tensor]] = list(getattr(s, "bias_function", []))

    # Copy when a function will run on the tensor, so it never edits the stored parameter.
    weight = cast_to(s.weight, None, device, non_blocking=non_blocking, copy=bool(weight_functions))
    bias = None
    if s.bias is not None:
        bias = cast_to(s.bias, None, device, non_blocking=non_blocking, copy=bool(bias_functions))
        bias = bias.to(dtype=bias_dtype)
        for f in bias_functions:
            bias = f(bias)
    if weight_functions or weight.dtype != dtype:
        weight = weight.to(dtype=dtype)
        for f in weight_functions:
            weight = f(weight)
    if offloadable:
        return weight, bias, (None, None, None)
    return weight, bias


def uncast_bias_weight(s: torch.nn.Module, weight: Any, bias: Any, offload_stream: Any) -> None:
    """Release what an offloadable :func:`cast_bias_weight` took; waits for its stream if any."""
    if offload_stream is None:
        return
    stream, weight_copy, bias_copy = offload_stream
    if stream is None:
        return
    source = weight_copy if isinstance(weight_copy, torch.Tensor) else bias_copy
    if isinstance(source, torch.Tensor):
        current = comfy.model_management.current_stream(source.device)
        if current is not None:
            stream.wait_stream(current)


class CastWeightBiasOp:
    """Mixin state every layer here has: whether it casts, and per-call weight/bias transforms."""

    comfy_cast_weights = False
    # Shared empty defaults, as in the reference: packs assign new lists per instance.
    weight_function: list[Callable[[torch.Tensor], torch.Tensor]] = []  # noqa: RUF012
    bias_function: list[Callable[[torch.Tensor], torch.Tensor]] = []  # noqa: RUF012


def _wants_cast(layer: Any) -> bool:
    return bool(layer.comfy_cast_weights or layer.weight_function or layer.bias_function)


def _no_init(self: Any) -> None:
    """``reset_parameters`` of these layers: weights come from a file, never from an init."""
    return None


def _cast_forward(base: type[torch.nn.Module]) -> Callable[..., torch.Tensor]:
    """The ``forward`` every layer here shares: cast when asked, else the torch layer's own."""

    def forward(self: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        run_every_op()
        if _wants_cast(self):
            return self.forward_comfy_cast_weights(*args, **kwargs)
        return base.forward(self, *args, **kwargs)

    return forward


class disable_weight_init:  # noqa: N801 - the reference's class name
    """Torch layers without weight initialisation; they cast only when asked (see module doc)."""

    class Linear(torch.nn.Linear, CastWeightBiasOp):
        reset_parameters = _no_init

        def forward_comfy_cast_weights(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
            weight, bias, stream = cast_bias_weight(self, input, offloadable=True)
            out = F.linear(input, weight, bias)
            uncast_bias_weight(self, weight, bias, stream)
            return out

        forward = _cast_forward(torch.nn.Linear)

    class Conv1d(torch.nn.Conv1d, CastWeightBiasOp):
        reset_parameters = _no_init

        def forward_comfy_cast_weights(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
            weight, bias, stream = cast_bias_weight(self, input, offloadable=True)
            out = self._conv_forward(input, weight, bias)
            uncast_bias_weight(self, weight, bias, stream)
            return out

        forward = _cast_forward(torch.nn.Conv1d)

    class Conv2d(torch.nn.Conv2d, CastWeightBiasOp):
        reset_parameters = _no_init

        def forward_comfy_cast_weights(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
            weight, bias, stream = cast_bias_weight(self, input, offloadable=True)
            out = self._conv_forward(input, weight, bias)
            uncast_bias_weight(self, weight, bias, stream)
            return out

        forward = _cast_forward(torch.nn.Conv2d)

    class Conv3d(torch.nn.Conv3d, CastWeightBiasOp):
        reset_parameters = _no_init

        def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Any, autopad: str | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:  # noqa: A002
            if autopad == "causal_zero":
                # Causal video convolution: only the kernel's last frames that fit the input.
                weight = weight[:, :, -input.shape[2] :, :, :]
            return super()._conv_forward(input, weight, bias, *args, **kwargs)

        def forward_comfy_cast_weights(self, input: torch.Tensor, autopad: str | None = None) -> torch.Tensor:  # noqa: A002
            weight, bias, stream = cast_bias_weight(self, input, offloadable=True)
            out = self._conv_forward(input, weight, bias, autopad=autopad)
            uncast_bias_weight(self, weight, bias, stream)
            return out

        def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            run_every_op()
            if _wants_cast(self) or "autopad" in kwargs:
                return self.forward_comfy_cast_weights(*args, **kwargs)
            return super().forward(*args, **kwargs)

    class GroupNorm(torch.nn.GroupNorm, CastWeightBiasOp):
        reset_parameters = _no_init

        def forward_comfy_cast_weights(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
            weight, bias, stream = cast_bias_weight(self, input, offloadable=True)
            out = F.group_norm(input, self.num_groups, weight, bias, self.eps)
            uncast_bias_weight(self, weight, bias, stream)
            return out

        forward = _cast_forward(torch.nn.GroupNorm)

    class BatchNorm2d(torch.nn.BatchNorm2d, CastWeightBiasOp):
        reset_parameters = _no_init

        def forward_comfy_cast_weights(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
            weight, bias, stream = cast_bias_weight(self, input, offloadable=True)
            mean = self.running_mean.to(input.device, weight.dtype) if self.running_mean is not None else None
            var = self.running_var.to(input.device, weight.dtype) if self.running_var is not None else None
            out = F.batch_norm(input, mean, var, weight, bias, self.training, self.momentum, self.eps)
            uncast_bias_weight(self, weight, bias, stream)
            return out

        forward = _cast_forward(torch.nn.BatchNorm2d)

    class LayerNorm(torch.nn.LayerNorm, CastWeightBiasOp):
        reset_parameters = _no_init

        def forward_comfy_cast_weights(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
            weight = bias = stream = None
            if self.weight is not None:
                weight, bias, stream = cast_bias_weight(self, input, offloadable=True)
            out = F.layer_norm(input, self.normalized_shape, weight, bias, self.eps)
            uncast_bias_weight(self, weight, bias, stream)
            return out

        forward = _cast_forward(torch.nn.LayerNorm)

    class RMSNorm(torch.nn.RMSNorm, CastWeightBiasOp):
        def reset_parameters(self) -> None:
            # cast_bias_weight reads .bias, which torch's RMSNorm does not have.
            self.bias = None

        def forward_comfy_cast_weights(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
            weight = bias = stream = None
            if self.weight is not None:
                weight, bias, stream = cast_bias_weight(self, input, offloadable=True)
            out = F.rms_norm(input, self.normalized_shape, weight, self.eps)
            uncast_bias_weight(self, weight, bias, stream)
            return out

        forward = _cast_forward(torch.nn.RMSNorm)

    class ConvTranspose2d(torch.nn.ConvTranspose2d, CastWeightBiasOp):
        reset_parameters = _no_init

        def forward_comfy_cast_weights(self, input: torch.Tensor, output_size: Any = None) -> torch.Tensor:  # noqa: A002
            padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation)
            weight, bias, stream = cast_bias_weight(self, input, offloadable=True)
            out = F.conv_transpose2d(input, weight, bias, self.stride, self.padding, padding, self.groups, self.dilation)
            uncast_bias_weight(self, weight, bias, stream)
            return out

        forward = _cast_forward(torch.nn.ConvTranspose2d)

    class ConvTranspose1d(torch.nn.ConvTranspose1d, CastWeightBiasOp):
        reset_parameters = _no_init

        def forward_comfy_cast_weights(self, input: torch.Tensor, output_size: Any = None) -> torch.Tensor:  # noqa: A002
            padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size, 1, self.dilation)
            weight, bias, stream = cast_bias_weight(self, input, offloadable=True)
            out = F.conv_transpose1d(input, weight, bias, self.stride, self.padding, padding, self.groups, self.dilation)
            uncast_bias_weight(self, weight, bias, stream)
            return out

        forward = _cast_forward(torch.nn.ConvTranspose1d)

    class Embedding(torch.nn.Embedding, CastWeightBiasOp):
        def reset_parameters(self) -> None:
            self.bias = None

        def forward_comfy_cast_weights(self, input: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:  # noqa: A002
            result_dtype = out_dtype
            if self.weight.dtype in (torch.float16, torch.bfloat16):
                # Half-precision tables are looked up as stored and converted afterwards.
                out_dtype = None
            weight, bias, stream = cast_bias_weight(self, device=input.device, dtype=out_dtype, offloadable=True)
            out = F.embedding(input, weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse)
            uncast_bias_weight(self, weight, bias, stream)
            return out.to(dtype=result_dtype)

        def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            run_every_op()
            if _wants_cast(self):
                return self.forward_comfy_cast_weights(*args, **kwargs)
            kwargs.pop("out_dtype", None)
            return super().forward(*args, **kwargs)

    @classmethod
    def conv_nd(cls, dims: int, *args: Any, **kwargs: Any) -> torch.nn.Module:
        if dims == 2:
            return cls.Conv2d(*args, **kwargs)
        if dims == 3:
            return cls.Conv3d(*args, **kwargs)
        raise ValueError(f"unsupported dimensions: {dims}")


class manual_cast(disable_weight_init):  # noqa: N801 - the reference's class name
    """The same layers, always casting weights to the input's dtype and device."""

    class Linear(disable_weight_init.Linear):
        comfy_cast_weights = True

    class Conv1d(disable_weight_init.Conv1d):
        comfy_cast_weights = True

    class Conv2d(disable_weight_init.Conv2d):
        comfy_cast_weights = True

    class Conv3d(disable_weight_init.Conv3d):
        comfy_cast_weights = True

    class BatchNorm2d(disable_weight_init.BatchNorm2d):
        comfy_cast_weights = True

    class GroupNorm(disable_weight_init.GroupNorm):
        comfy_cast_weights = True

    class LayerNorm(disable_weight_init.LayerNorm):
        comfy_cast_weights = True

    class ConvTranspose2d(disable_weight_init.ConvTranspose2d):
        comfy_cast_weights = True

    class ConvTranspose1d(disable_weight_init.ConvTranspose1d):
        comfy_cast_weights = True

    class RMSNorm(disable_weight_init.RMSNorm):
        comfy_cast_weights = True

    class Embedding(disable_weight_init.Embedding):
        comfy_cast_weights = True


# fp8 matrix multiplication needs hardware this server does not use; the name stays importable
# and behaves as manual_cast.
fp8_ops = manual_cast
CUBLAS_IS_AVAILABLE = False


def pick_operations(
    weight_dtype: torch.dtype | None,
    compute_dtype: torch.dtype | None,
    load_device: Any = None,
    disable_fast_fp8: bool = False,
    fp8_optimizations: bool = False,
    model_config: Any = None,
    scaled_fp8: Any = None,
) -> type[disable_weight_init]:
    """``disable_weight_init`` when weights are computed in their own dtype, else ``manual_cast``."""
    if compute_dtype is None or weight_dtype == compute_dtype:
        return disable_weight_init
    return manual_cast
