"""``comfy.ldm.lightricks.av_model``: the LTX-2 audio-video transformer's class.

ComfyUI-LTXVideo imports ``LTXAVModel`` to check ``isinstance`` / annotate; comfykernel does not
run LTX-Video models, so the class exists (never matching a model this server loads) and
building one raises :class:`~comfy.ldm._not_run.ModelFamilyNotRun`.
"""

from __future__ import annotations

from comfy.ldm.lightricks.model import LTXBaseModel


class LTXAVModel(LTXBaseModel):
    """The LTX-2 audio-video transformer (not run by comfykernel)."""
