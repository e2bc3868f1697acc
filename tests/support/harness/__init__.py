"""Test harnesses shared by the tests and scripts/demo.py: a real ComfyUI server, its HTTP client, a headless browser."""
