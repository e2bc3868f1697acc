"""control: turning videos and images into VACE control for the sampler, with no model downloads.

Owns: `frames` (fitting clips and masks to a size and frame count the way core's Wan nodes do), `vace_latents`
(the latent preparation of core WanVaceToVideo: inactive/reactive split, mask packing, reference frames),
`preprocess` (Canny edges, soft edges, tile blur, grayscale on opencv). Works on ComfyUI-layout IMAGE/MASK tensors
([frames, H, W, C] in 0..1) as plain torch; VAE encoding comes in as a callable. May import: `wan_core.vae`
(latent statistics, frame rules), `wan_core.config`.
"""
