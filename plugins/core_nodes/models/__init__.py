"""The Stable Diffusion model stack in torch: checkpoints, UNet, VAE, text encoders, model manager.

Nothing here imports diffusers or transformers; those are test-time references only.
"""
