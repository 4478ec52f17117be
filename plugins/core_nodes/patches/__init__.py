"""The functions the guidance and UNet patch nodes install on a MODEL.

Each module builds the callables one family of nodes hands to the MODEL's patch API
(``set_model_sampler_*_function``, attention and block patches, wrappers, weight patches); the
node classes in :mod:`plugins.core_nodes.nodes.guidance_patches` and
:mod:`plugins.core_nodes.nodes.unet_patches` only clone the MODEL and install them. Nothing here
imports the server: the functions are plain tensor code a test can call directly.
"""
