"""Types declared as ``str`` subclasses, the way many packs spell "any type" and their own types."""

import torch


class AnyType(str):
    """Matches every type: validation compares with ``!=``, which this always answers False."""

    def __ne__(self, other):
        return False


class PackType(str):
    """A pack's own type name as a ``str`` subclass that does *not* widen matching."""


class ByPassTypeTuple(tuple):
    """RETURN_TYPES whose every index answers with a type matching anything (dynamic outputs)."""

    def __getitem__(self, index):
        item = super().__getitem__(0 if index > 0 else index)
        return AnyType(item) if isinstance(item, str) else item


any_type = AnyType("*")
latent_like = PackType("PACK_LATENT")


class AnySource:
    """Yields an int, or a black image of that size: one output that fits any input."""

    CATEGORY = "compat/any"
    RETURN_TYPES = (any_type,)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 2, "min": 0, "max": 64}), "as_image": ("BOOLEAN",)}}

    def run(self, value, as_image):
        return (torch.zeros(1, value, value, 3) if as_image else value,)


class PackTypeSource:
    CATEGORY = "compat/any"
    RETURN_TYPES = (latent_like,)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        return ({"samples": torch.zeros(1, 4, 1, 1)},)


class BypassSource:
    CATEGORY = "compat/any"
    RETURN_TYPES = ByPassTypeTuple(("PACK_FLOW", "INT"))
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        return ("flow", 5)


class PackStringSource:
    """A STRING output whose value is a ``str`` subclass instance."""

    CATEGORY = "compat/any"
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "hello"})}}

    def run(self, text):
        return (PackType(text),)


class AnyEcho:
    """Output node: shows its input as given (a ``str`` subclass stays one)."""

    CATEGORY = "compat/any"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"anything": (any_type,)}}

    def run(self, anything):
        return {"ui": {"text": [anything]}}


class AnyFail:
    CATEGORY = "compat/any"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"anything": (any_type,)}}

    def run(self, anything):
        raise ValueError(f"cannot use {anything}")


class AnySink:
    """Output node with an any-typed input."""

    CATEGORY = "compat/any"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"anything": (any_type, {})}}

    def run(self, anything):
        return {"ui": {"text": [type(anything).__name__]}}


class IntSink:
    CATEGORY = "compat/any"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"number": ("INT", {"min": 0, "max": 100})}}

    def run(self, number):
        return {"ui": {"number": [number]}}


class ImageSink:
    CATEGORY = "compat/any"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image):
        return {"ui": {"shape": [list(image.shape)]}}


NODE_CLASS_MAPPINGS = {
    "AnySource": AnySource,
    "PackTypeSource": PackTypeSource,
    "BypassSource": BypassSource,
    "PackStringSource": PackStringSource,
    "AnyEcho": AnyEcho,
    "AnyFail": AnyFail,
    "AnySink": AnySink,
    "IntSink": IntSink,
    "ImageSink": ImageSink,
}
