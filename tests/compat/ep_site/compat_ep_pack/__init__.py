"""A pack installed as a distribution, advertised under the comfyui.custom_nodes entry points."""


class EntryPointEcho:
    CATEGORY = "compat"
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "hi"})}}

    def run(self, text):
        return (f"ep:{text}",)


NODE_CLASS_MAPPINGS = {"EntryPointEcho": EntryPointEcho}
