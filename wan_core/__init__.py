"""wan_core: the Wan2.2-T2V-A14B engine in pure PyTorch (no ComfyUI imports).

Data flows one way: files -> loaders -> cache -> engine. Submodules are imported on demand so that
`import wan_core` stays cheap.
"""

__version__ = "0.1.0"
