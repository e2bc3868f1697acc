"""Loader nodes: pick model files and settings; the weights load lazily, on first use, through wan_core's shared cache."""

from __future__ import annotations

from .api_version import io

from ..wan_core import api
from ..wan_core.config import (COMFY_FILES, COMPUTE_OPTIONS, ENCODER_DTYPES, MAX_GPUS, MODEL_PLACEMENTS,
                               TEXT_DEVICES, VAE_DTYPES, WEIGHT_DTYPE_OPTIONS)

from .model_files import (NO_MODULE, diffusion_model_choices, file_choices, fingerprint, full_path, not_listed,
                          vace_module_choices, vace_module_path)
from .sockets import WanMoEModelType, WanMoETextEncoderType, WanMoEVAEType, boundary_input
from .values import widget_problem

CATEGORY = "WanMoE"


def _default(choices: list[str], preferred: str) -> str:
    """The public file name when it is present (or when nothing is), else the first listed file."""
    return preferred if preferred in choices or not choices else choices[0]


class WanMoEModelLoader(io.ComfyNode):
    """The two Wan2.2-T2V-A14B experts (high-noise and low-noise) as one model for the MoE sampler."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        high = low = diffusion_model_choices()
        modules = vace_module_choices()
        return io.Schema(
            node_id="WanMoEModelLoader",
            display_name="Wan2.2 MoE Model Loader",
            category=CATEGORY,
            description="Selects the high-noise and low-noise Wan2.2-T2V-A14B experts. Nothing is read until the sampler "
                        "runs; the shared cache loads each expert once and keeps VRAM and RAM inside their budgets.",
            inputs=[
                io.Combo.Input("high_noise_model", options=high, default=_default(high, COMFY_FILES["high_fp16"]),
                               tooltip="High-noise expert (runs while t >= boundary x 1000), from models/diffusion_models: "
                                       "a single file (fp16/bf16/fp8_scaled, nvfp4/mxfp8/int8, GGUF Q8_0...Q3_K_S), an official "
                                       "high_noise_model/ folder or a diffusers pipeline's transformer/ (by their index)."),
                io.Combo.Input("low_noise_model", options=low, default=_default(low, COMFY_FILES["low_fp16"]),
                               tooltip="Low-noise expert (runs below the boundary), from models/diffusion_models."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPE_OPTIONS), default="auto",
                               tooltip="Precision the weights are kept in. auto keeps each file's stored precision "
                                       "(scaled fp8, GGUF and nvfp4/mxfp8/int8 stay packed and are dequantised layer by layer); "
                                       "fp8 halves memory and is computed in bf16/fp16 layer by layer."),
                io.Combo.Input("placement", options=list(MODEL_PLACEMENTS), default="auto",
                               tooltip="Where the experts live. auto picks from free VRAM/RAM: resident (both on the GPU), "
                                       "swap (one on the GPU at a time, swapped at the boundary step), stream (transformer "
                                       "blocks streamed to the GPU one by one, for GPUs that cannot hold one expert). "
                                       "shard (gpus 2+): every GPU holds 1/gpus of each block, for GPUs that cannot hold "
                                       "a whole expert; with auto each GPU holds its own copy."),
                io.Combo.Input("attention", options=api.available_attention(), default="sdpa",
                               tooltip="Attention kernel. sdpa is PyTorch's scaled_dot_product_attention, which picks "
                                       "flash / memory-efficient kernels on a GPU."),
                boundary_input(),
                io.Combo.Input("compute_dtype", options=list(COMPUTE_OPTIONS), default="auto", optional=True,
                               tooltip="Precision of the matmuls. auto: bf16 on a GPU, fp32 on the CPU; bf16 on the CPU "
                                       "is several times faster there, with a small measured difference (see README)."),
                io.Boolean.Input("compile", default=False, optional=True,
                                 tooltip="torch.compile the transformer blocks (GPU; the first step compiles, later "
                                         "steps and merged LoRAs reuse it)."),
                io.Boolean.Input("fp8_matmul", default=False, optional=True,
                                 tooltip="Multiply fp8 (e4m3) weights in fp8 on GPUs that have fp8 tensor cores (RTX 40xx, "
                                         "H100, B200) instead of upcasting them: faster, with the input quantised to fp8 "
                                         "(a small measured difference). Other GPUs fall back with a warning."),
                io.Int.Input("gpus", default=api.default_gpus(), min=1, max=MAX_GPUS, optional=True,
                             tooltip="GPUs of this machine every sampling step uses (1, 2, 4, 5 or 8 for A14B's 40 heads). "
                                     "At cfg > 1 cond and uncond run on two halves of them, and each half splits the video "
                                     "tokens (Ulysses); worker processes start on the first run and stay for the next. "
                                     "Default: WANMOE_GPUS, else 1. See docs/multi-gpu.md."),
                io.Combo.Input("vace_module_high", options=modules, default=NO_MODULE, optional=True,
                               tooltip="Optional VACE module file (e.g. Wan2_2_Fun_VACE_module_A14B_HIGH_bf16.safetensors, "
                                       "from models/diffusion_models or models/vace) attached to a plain high-noise "
                                       "expert, for control videos. Not needed with merged VACE experts "
                                       "(wan2.2_fun_vace_*_14B_*)."),
                io.Combo.Input("vace_module_low", options=modules, default=NO_MODULE, optional=True,
                               tooltip="Optional VACE module file for the low-noise expert (..._LOW_...)."),
            ],
            outputs=[WanMoEModelType.Output(display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        choices = diffusion_model_choices()
        for key in ("high_noise_model", "low_noise_model"):
            message = not_listed("diffusion_models", values[key], choices) if key in values else None
            if message:
                return message
        modules = vace_module_choices()
        for key in ("vace_module_high", "vace_module_low"):
            name = values.get(key, NO_MODULE)
            if isinstance(name, str) and name not in modules:
                return (f"VACE module '{name}' is in neither models/diffusion_models nor models/vace; put it there "
                        f"and refresh (press R), or choose {NO_MODULE}")
        return widget_problem(cls, values) or True

    @classmethod
    def fingerprint_inputs(cls, high_noise_model: str, low_noise_model: str, **_settings) -> object:
        return fingerprint("diffusion_models", high_noise_model), fingerprint("diffusion_models", low_noise_model)

    @classmethod
    def execute(cls, high_noise_model: str, low_noise_model: str, weight_dtype: str, placement: str, attention: str,
                boundary: float, compute_dtype: str = "auto", compile: bool = False, fp8_matmul: bool = False,
                gpus: int | None = None, vace_module_high: str = NO_MODULE,
                vace_module_low: str = NO_MODULE) -> io.NodeOutput:
        request = api.ModelRequest(
            high_noise_path=full_path("diffusion_models", high_noise_model),
            low_noise_path=full_path("diffusion_models", low_noise_model),
            weight_dtype=weight_dtype, placement=placement, attention=attention, boundary=boundary,
            high_noise_name=high_noise_model, low_noise_name=low_noise_model, compute=compute_dtype, compile=compile,
            fp8_matmul=fp8_matmul,
            gpus=gpus if gpus is not None else api.default_gpus(),
            vace_module_high_path=vace_module_path(vace_module_high), vace_module_low_path=vace_module_path(vace_module_low),
        )
        return io.NodeOutput(request)


class WanMoETextEncoderLoader(io.ComfyNode):
    """The umT5-XXL text encoder of Wan2.2 (official .pth, ComfyUI's umt5_xxl_*.safetensors, or a HF folder)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        choices = file_choices("text_encoders")
        return io.Schema(
            node_id="WanMoETextEncoderLoader",
            display_name="Wan2.2 Text Encoder Loader (umT5-XXL)",
            category=CATEGORY,
            description="Selects the umT5-XXL encoder. It loads on the first prompt that is not in the prompt cache.",
            inputs=[
                io.Combo.Input("text_encoder", options=choices, default=_default(choices, COMFY_FILES["t5_fp16"]),
                               tooltip="umT5-XXL weights from models/text_encoders: umt5_xxl_fp16.safetensors, "
                                       "umt5_xxl_fp8_e4m3fn_scaled.safetensors, the official models_t5_umt5-xxl-enc-bf16.pth, a "
                                       "Hugging Face umT5 folder or a diffusers pipeline's text_encoder/ (listed as folders)."),
                io.Combo.Input("device", options=list(TEXT_DEVICES), default="gpu",
                               tooltip="Where the encoder runs. cpu saves about 11 GB of VRAM (bf16) at the cost of a "
                                       "slower encode; repeated prompts come from the cache either way."),
                io.Combo.Input("dtype", options=list(ENCODER_DTYPES), default="auto",
                               tooltip="Compute/storage precision; auto keeps the file's precision (bf16 on CPU for fp8 files)."),
            ],
            outputs=[WanMoETextEncoderType.Output(display_name="text_encoder")],
        )

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        listed = not_listed("text_encoders", values["text_encoder"], file_choices("text_encoders")) \
            if "text_encoder" in values else None
        return listed or widget_problem(cls, values) or True

    @classmethod
    def fingerprint_inputs(cls, text_encoder: str, **_settings) -> object:
        return fingerprint("text_encoders", text_encoder)

    @classmethod
    def execute(cls, text_encoder: str, device: str, dtype: str) -> io.NodeOutput:
        return io.NodeOutput(api.TextEncoderRequest(full_path("text_encoders", text_encoder), device, dtype, text_encoder))


class WanMoEVAELoader(io.ComfyNode):
    """The Wan2.1 video VAE (16 latent channels) that Wan2.2-T2V-A14B uses."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        choices = file_choices("vae")
        return io.Schema(
            node_id="WanMoEVAELoader",
            display_name="Wan2.1 VAE Loader",
            category=CATEGORY,
            inputs=[
                io.Combo.Input("vae", options=choices, default=_default(choices, COMFY_FILES["vae"]),
                               tooltip="wan_2.1_vae.safetensors (Comfy-Org), the official Wan2.1_VAE.pth (models/vae) or a "
                                       "diffusers pipeline's vae/ folder. "
                                       "The Wan2.2 VAE (48 channels) belongs to the 5B model and does not fit A14B."),
                io.Combo.Input("dtype", options=list(VAE_DTYPES), default="bf16",
                               tooltip="Compute precision of the VAE (the official code runs it in fp32; bf16 halves memory)."),
            ],
            outputs=[WanMoEVAEType.Output(display_name="vae")],
        )

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        listed = not_listed("vae", values["vae"], file_choices("vae")) if "vae" in values else None
        return listed or widget_problem(cls, values) or True

    @classmethod
    def fingerprint_inputs(cls, vae: str, **_settings) -> object:
        return fingerprint("vae", vae)

    @classmethod
    def execute(cls, vae: str, dtype: str) -> io.NodeOutput:
        return io.NodeOutput(api.VAERequest(full_path("vae", vae), dtype, vae))


NODES = [WanMoEModelLoader, WanMoETextEncoderLoader, WanMoEVAELoader]
