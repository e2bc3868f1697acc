"""Tiny random-weight checkpoints written in the real file layouts, for tests and the demo.

Each component has a module here (`dit`, `t5`, `vae`) that writes random weights at a tiny config in
each layout users have (official, ComfyUI, diffusers), so every loader is exercised on real formats
without the 60 GB of real weights.
"""
