"""``comfy.ldm.lightricks.vae.audio_vae``: the LTX-2 audio VAE's constants and class.

``LATENT_DOWNSAMPLE_FACTOR`` is the reference's value (mel frames per audio latent frame);
ComfyUI-LTXVideo computes latent rates from it. comfykernel does not run LTX-Video models, so
building an ``AudioVAE`` raises :class:`~comfy.ldm._not_run.ModelFamilyNotRun`.
"""

from __future__ import annotations

from comfy.ldm._not_run import NotRunModel

# Mel-spectrogram frames per latent frame of the LTX-2 audio VAE.
LATENT_DOWNSAMPLE_FACTOR = 4


class AudioVAE(NotRunModel):
    """The LTX-2 audio VAE (not run by comfykernel)."""

    FAMILY = "LTX-Video (Lightricks) audio"
