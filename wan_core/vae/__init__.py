"""vae: the Wan2.1 video VAE (16 latent channels) and everything about its latent space.

Owns: `model` (the causal network in the official key layout), `loader`, `shapes` (the 4n+1 frame rules and
latent sizes), `latent_format` (the 16 per-channel statistics: raw <-> normalised latents), `preview` (a
cheap latent -> RGB approximation for sampler previews). May import: `wan_core.io`, `wan_core.memory`,
`wan_core.config`.
"""
