"""A pack that loads quantized models with layer classes of its own, as ComfyUI-GGUF does.

Its layers subclass ``comfy.ops.manual_cast``'s and are handed to the model loaders as
``model_options["custom_operations"]``; they keep the weights the way they were stored and
dequantize them in ``forward``:

* ``Int8Ops``: ``<layer>.weight`` int8 with a float ``<layer>.weight_scale`` beside it in the file
  (weight = int8 * scale), taken out of the state dict by the layer's own ``_load_from_state_dict``.
  ``QuantOpsCheckpointLoader`` loads a whole checkpoint so (``load_checkpoint_guess_config`` with
  ``model_options`` and ``te_model_options``), ``QuantOpsUNetLoader`` a UNet state dict
  (``load_diffusion_model_state_dict``), ``QuantOpsCLIPLoader`` a text encoder
  (``load_text_encoder_state_dicts``, its ``patcher`` then the pack's class, as GGUF's CLIP loader does).
* ``Q8Ops``: ``QuantOpsUNetLoader`` reads a ``.gguf`` file with the ``gguf`` package; Q8_0 tensors
  stay raw blocks in a tensor subclass that reports the layer's shape (as ComfyUI-GGUF's
  ``GGMLTensor`` does) and are dequantized with ``gguf.quants`` on every call. The MODEL is turned
  into the pack's own ``ModelPatcher`` class (``QuantOpsPatcher.clone(model)``, GGUF's trick),
  which hands weight patches (LoRA) to the tensors so they apply after dequantizing.

``QuantOpsReport`` tells how many layers of a MODEL / CLIP hold quantized weights and how many
dequantizing calls have run, so a test knows the pack's layers did the work.
"""

import comfy.lora
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.utils
import folder_paths
import torch
import torch.nn.functional as F

DEQUANTIZED_CALLS = {"int8": 0, "q8_0": 0}


# --- int8 + scale ------------------------------------------------------------------------------


class _Int8Layer:
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        weight = state_dict.get(prefix + "weight")
        scale = state_dict.get(prefix + "weight_scale")
        if weight is None or weight.dtype != torch.int8 or scale is None:
            return super()._load_from_state_dict(
                state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
            )
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.register_buffer("weight_scale", scale)
        bias = state_dict.get(prefix + "bias")
        if bias is not None:
            self.bias = torch.nn.Parameter(bias, requires_grad=False)
        elif self.bias is not None:
            missing_keys.append(prefix + "bias")

    def _dequantized(self, input):
        DEQUANTIZED_CALLS["int8"] += 1
        weight = self.weight.to(input.device, torch.float32) * self.weight_scale.to(input.device)
        bias = None if self.bias is None else self.bias.to(input.device, input.dtype)
        return weight.to(input.dtype), bias


class Int8Ops(comfy.ops.manual_cast):
    class Linear(_Int8Layer, comfy.ops.manual_cast.Linear):
        def forward_comfy_cast_weights(self, input):
            if self.weight.dtype != torch.int8:
                return super().forward_comfy_cast_weights(input)
            weight, bias = self._dequantized(input)
            return F.linear(input, weight, bias)

    class Conv2d(_Int8Layer, comfy.ops.manual_cast.Conv2d):
        def forward_comfy_cast_weights(self, input):
            if self.weight.dtype != torch.int8:
                return super().forward_comfy_cast_weights(input)
            weight, bias = self._dequantized(input)
            return self._conv_forward(input, weight, bias)


# --- GGUF Q8_0 ---------------------------------------------------------------------------------


class Q8Tensor(torch.Tensor):
    """Raw Q8_0 blocks (uint8) that report the layer's shape, as ComfyUI-GGUF's tensors do."""

    @staticmethod
    def __new__(cls, raw, shape):
        t = raw.as_subclass(cls)
        t.layer_shape = torch.Size(shape)
        t.patches = []  # [(patches, key)] while a patched MODEL runs
        return t

    @property
    def shape(self):
        return self.layer_shape

    def size(self, *args):
        return self.layer_shape if not args else self.layer_shape[args[0]]

    def detach(self, *args, **kwargs):
        # nn.Parameter(...) detaches; the blocks and their shape must survive it.
        return self

    def to(self, *args, **kwargs):
        moved = Q8Tensor(torch.Tensor.to(self.as_subclass(torch.Tensor), *args, **kwargs), self.layer_shape)
        moved.patches = list(self.patches)
        return moved

    def dequantize(self):
        import gguf

        raw = self.as_subclass(torch.Tensor).cpu().numpy()
        values = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0)
        weight = torch.from_numpy(values).reshape(self.layer_shape)
        for patches, key in self.patches:
            weight = comfy.lora.calculate_weight(patches, weight, key)
        return weight


class _Q8Layer:
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        weight = state_dict.get(prefix + "weight")
        if not isinstance(weight, Q8Tensor):
            return super()._load_from_state_dict(
                state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
            )
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        bias = state_dict.get(prefix + "bias")
        if bias is not None:
            self.bias = torch.nn.Parameter(bias, requires_grad=False)

    def forward_comfy_cast_weights(self, input):
        if not isinstance(self.weight, Q8Tensor):
            return super().forward_comfy_cast_weights(input)
        DEQUANTIZED_CALLS["q8_0"] += 1
        weight = self.weight.dequantize().to(input.device, input.dtype)
        bias = None if self.bias is None else self.bias.to(input.device, input.dtype)
        return F.linear(input, weight, bias)


class Q8Ops(comfy.ops.manual_cast):
    class Linear(_Q8Layer, comfy.ops.manual_cast.Linear):
        pass


class QuantOpsPatcher(comfy.model_patcher.ModelPatcher):
    """Weight patches on Q8_0 weights ride on the tensor and apply after dequantizing."""

    def patch_weight_to_device(self, key, device_to=None, inplace_update=False):
        weight = comfy.utils.get_attr(self.model, key)
        if key in self.patches and isinstance(weight, Q8Tensor):
            weight.patches = [(self.patches[key], key)]
            return
        super().patch_weight_to_device(key, device_to, inplace_update)

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        if unpatch_weights:
            for param in self.model.parameters():
                if isinstance(param, Q8Tensor):
                    param.patches = []
        return super().unpatch_model(device_to=device_to, unpatch_weights=unpatch_weights)

    def clone(self, *args, **kwargs):
        # Called on the loader's MODEL too (QuantOpsPatcher.clone(model)): the copy is ours.
        source = self.__class__
        self.__class__ = QuantOpsPatcher
        try:
            copy = super().clone(*args, **kwargs)
        finally:
            self.__class__ = source
        copy.__class__ = QuantOpsPatcher
        return copy


def read_gguf(path):
    """The tensors of a ``.gguf`` file: F32 ones as plain tensors, Q8_0 ones as ``Q8Tensor``."""
    import gguf

    reader = gguf.GGUFReader(path)
    sd = {}
    for tensor in reader.tensors:
        shape = tuple(int(n) for n in reversed(tensor.shape))
        data = torch.from_numpy(tensor.data.copy())
        if tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0:
            sd[tensor.name] = Q8Tensor(data, shape)
        elif tensor.tensor_type == gguf.GGMLQuantizationType.F32:
            sd[tensor.name] = data.reshape(shape)
        else:
            raise ValueError(f"{tensor.name}: {tensor.tensor_type.name} tensors are not read by this pack")
    return sd


# --- nodes -------------------------------------------------------------------------------------


class QuantOpsCheckpointLoader:
    CATEGORY = "compat/quant"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),)}}

    def load(self, ckpt_name):
        path = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
        ops = {"custom_operations": Int8Ops}
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
            path, model_options=ops, te_model_options=ops,
            embedding_directory=folder_paths.get_folder_paths("embeddings"),
        )  # fmt: skip
        return (model, clip, vae)


class QuantOpsUNetLoader:
    CATEGORY = "compat/quant"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"unet_name": ("STRING", {"default": ""})}}

    def load(self, unet_name):
        path = folder_paths.get_full_path_or_raise("diffusion_models", unet_name)
        if path.endswith(".gguf"):
            model = comfy.sd.load_diffusion_model_state_dict(read_gguf(path), model_options={"custom_operations": Q8Ops})
            return (QuantOpsPatcher.clone(model),)
        sd = comfy.utils.load_torch_file(path)
        return (comfy.sd.load_diffusion_model_state_dict(sd, model_options={"custom_operations": Int8Ops}),)


class QuantOpsCLIPLoader:
    CATEGORY = "compat/quant"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": (folder_paths.get_filename_list("text_encoders"),)}}

    def load(self, clip_name):
        path = folder_paths.get_full_path_or_raise("text_encoders", clip_name)
        clip = comfy.sd.load_text_encoder_state_dicts(
            state_dicts=[comfy.utils.load_torch_file(path)],
            clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION,
            model_options={"custom_operations": Int8Ops},
            embedding_directory=folder_paths.get_folder_paths("embeddings"),
        )
        clip.patcher = QuantOpsPatcher.clone(clip.patcher)
        return (clip,)


def _quantized_layers(module):
    return sum(
        1
        for m in module.modules()
        if isinstance(getattr(m, "weight", None), torch.Tensor)
        and (isinstance(m.weight, Q8Tensor) or m.weight.dtype == torch.int8)
    )


class QuantOpsReport:
    CATEGORY = "compat/quant"
    RETURN_TYPES = ()
    FUNCTION = "report"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "after": ("LATENT",)}, "optional": {"clip": ("CLIP",)}}

    def report(self, model, after, clip=None):
        text = {
            "unet_layers": _quantized_layers(model.model.diffusion_model),
            "clip_layers": _quantized_layers(clip.cond_stage_model) if clip is not None else 0,
            # What packs cast their inputs to: the compute dtype, not the packed weights'.
            "model_dtype_float32": int(model.model_dtype() == torch.float32),
            **DEQUANTIZED_CALLS,
        }
        return {"ui": {"text": [f"{k}={v}" for k, v in text.items()]}}


NODE_CLASS_MAPPINGS = {
    "QuantOpsCheckpointLoader": QuantOpsCheckpointLoader,
    "QuantOpsUNetLoader": QuantOpsUNetLoader,
    "QuantOpsCLIPLoader": QuantOpsCLIPLoader,
    "QuantOpsReport": QuantOpsReport,
}
