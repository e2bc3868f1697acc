"""Before the text encoder: WanMoEPromptEnhance (template or local LLM) and WanMoESafetyFilter (sensitive terms).

Both take and give plain STRINGs, so they chain into WanMoETextEncode's positive prompt or core CLIPTextEncode.
"""

from __future__ import annotations

import logging
import os

from .api_version import io

from ..wan_core import api

from .comfy_bridge import check_cancel, compute_device
from .extra_folders import NONE, folder_not_listed, model_folder_path, model_folders
from .model_files import file_choices, full_path

CATEGORY = "WanMoE/prompt"
log = logging.getLogger("ComfyUI-WanMoE")
LLM_FOLDER, TERMS_FOLDER = "LLM", "safety_terms"
TEMPLATE_DEFAULTS = {"shot": "medium shot", "camera": NONE, "lighting": "soft daylight", "color": NONE,
                     "style": "cinematic"}
TEMPLATE_TOOLTIPS = {
    "shot": "Shot size / angle appended in template mode (none = leave it out).",
    "camera": "Camera movement appended in template mode.",
    "lighting": "Lighting appended in template mode.",
    "color": "Colour tone appended in template mode.",
    "style": "Visual style appended in template mode.",
}


def term_files() -> list[str]:
    """Paths of the user's term lists (every .txt file in models/safety_terms)."""
    return [full_path(TERMS_FOLDER, name) for name in file_choices(TERMS_FOLDER)]


def llm_choices() -> list[str]:
    """Model folders in models/LLM, or just "none" when there is none."""
    return model_folders(LLM_FOLDER) or [NONE]


class WanMoEPromptEnhance(io.ComfyNode):
    """Expands a short prompt into Wan2.2's detailed style, and shows exactly what it changed."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        template_inputs = [
            io.Combo.Input(name, options=[NONE, *api.TEMPLATE_FIELDS[name]], default=TEMPLATE_DEFAULTS[name],
                           tooltip=TEMPLATE_TOOLTIPS[name])
            for name in ("shot", "camera", "lighting", "color", "style")
        ]
        return io.Schema(
            node_id="WanMoEPromptEnhance",
            display_name="Wan2.2 Prompt Enhance",
            category=CATEGORY,
            description="template: keeps your prompt word for word and appends the chosen scene, shot, camera, "
                        "lighting, colour and style details in the prompt's language (English or Chinese); nothing "
                        "random. llm: a local language model (models/LLM) rewrites it under a film-director system "
                        "prompt; a rewrite that drops your subject is not used silently. The 'changes' output lists "
                        "every change.",
            inputs=[
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="Your prompt: the subject and what it does, in English or Chinese."),
                io.Combo.Input("mode", options=list(api.ENHANCE_MODES), default="template",
                               tooltip="template: deterministic expansion, no model. llm: rewrite with the language "
                                       "model chosen in llm_model."),
                io.Combo.Input("language", options=list(api.PROMPT_LANGUAGES), default="auto",
                               tooltip="Language of the added text; auto follows the prompt (Chinese if a fifth of its "
                                       "letters are Chinese characters)."),
                io.String.Input("scene", default="",
                                tooltip="Template mode: the setting and background, appended after your prompt "
                                        "(e.g. 'a sunlit birch forest in winter'). Empty = none."),
                *template_inputs,
                io.Boolean.Input("skip_covered", default=True,
                                 tooltip="Template mode: leave out a field your prompt already talks about (e.g. no "
                                         "lighting is added to a prompt that mentions 'light')."),
                io.Combo.Input("llm_model", options=llm_choices(),
                               tooltip="LLM mode: a model folder in models/LLM (config.json, safetensors, tokenizer), "
                                       "e.g. Qwen2.5-3B-Instruct or Qwen2.5-7B-Instruct. Never downloaded by the node."),
                io.String.Input("subject", default="",
                                tooltip="LLM mode: the words that must survive the rewrite, comma-separated (e.g. "
                                        "'red fox, snow'). Empty: two thirds of your first clause's words must."),
                io.Combo.Input("on_subject_lost", options=list(api.ON_SUBJECT_LOST), default="keep original",
                               tooltip="LLM mode, when the rewrite drops the subject: keep original (use your prompt), "
                                       "error (stop the run), or use enhanced (use it, flagged in 'changes')."),
                io.Int.Input("max_new_tokens", default=256, min=16, max=1024,
                             tooltip="LLM mode: longest rewrite in tokens (the official extension allows 512)."),
                io.Float.Input("temperature", default=0.0, min=0.0, max=2.0, step=0.05,
                               tooltip="LLM mode: 0 = greedy (the same rewrite every time); above 0 samples with seed."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="LLM mode: sampling seed (used when temperature > 0)."),
                io.Combo.Input("llm_dtype", options=list(api.LLM_DTYPES), default="auto",
                               tooltip="LLM mode: precision; auto is bf16 on a GPU and fp32 on the CPU."),
            ],
            outputs=[io.String.Output(display_name="prompt"), io.String.Output(display_name="changes")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, mode: str, llm_model: str) -> bool | str:
        # The folder matters only in llm mode: template-mode workflows run without any language model present.
        return (mode == "llm" and folder_not_listed(LLM_FOLDER, llm_model)) or True

    @classmethod
    def execute(cls, prompt: str, mode: str, language: str, scene: str, shot: str, camera: str, lighting: str,
                color: str, style: str, skip_covered: bool, llm_model: str, subject: str, on_subject_lost: str,
                max_new_tokens: int, temperature: float, seed: int, llm_dtype: str) -> io.NodeOutput:
        check_cancel()
        result = api.enhance_prompt(
            prompt, mode=mode, language=language, scene=scene, skip_covered=skip_covered,
            choices={"shot": shot, "camera": camera, "lighting": lighting, "color": color, "style": style},
            llm_path=model_folder_path(LLM_FOLDER, llm_model) if mode == "llm" else None, subject=subject,
            on_subject_lost=on_subject_lost, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
            dtype=llm_dtype, device=compute_device())
        report = result.report()
        log.info("WanMoEPromptEnhance:\n%s", report)
        return io.NodeOutput(result.text, report, ui={"text": [report]})


class WanMoESafetyFilter(io.ComfyNode):
    """Stops (or warns about) prompts that contain sensitive terms, before they are encoded."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanMoESafetyFilter",
            display_name="Wan2.2 Prompt Safety Filter",
            category=CATEGORY,
            description="Checks the prompt against sensitive-term lists (a small shipped English + Chinese list, your "
                        "own .txt lists in models/safety_terms, and extra_terms). block stops the run with an error "
                        "naming the matched terms; warn passes the prompt on and reports them.",
            inputs=[
                io.String.Input("text", multiline=True, default="",
                                tooltip="The prompt to check (link it from Prompt Enhance or type it)."),
                io.Combo.Input("mode", options=list(api.SAFETY_MODES), default="block",
                               tooltip="block: stop the run when a term matches. warn: pass the prompt on, name the "
                                       "terms in 'report' and the log."),
                io.Combo.Input("term_lists", options=list(api.TERM_LISTS), default=api.TERM_LISTS[0],
                               tooltip="Which lists to use: the shipped default (docs/nodes.md lists its terms), plus "
                                       "or instead of every .txt file in models/safety_terms (one term per line)."),
                io.String.Input("extra_terms", multiline=True, default="",
                                tooltip="More terms, one per line ('#' lines are comments; a trailing * also matches "
                                        "longer words)."),
            ],
            outputs=[io.String.Output(display_name="text"), io.String.Output(display_name="report")],
        )

    @classmethod
    def fingerprint_inputs(cls, term_lists: str, **_) -> object:
        # Edited or added term files must rerun the check, not reuse ComfyUI's cached output.
        return term_lists, tuple((path, os.path.getmtime(path)) for path in term_files())

    @classmethod
    def execute(cls, text: str, mode: str, term_lists: str, extra_terms: str) -> io.NodeOutput:
        files = term_files()
        checked, report = api.check_prompt(text, mode=mode, lists=term_lists, user_files=files, extra_terms=extra_terms)
        if report.startswith("warning"):
            log.warning("WanMoESafetyFilter: %s", report)
        return io.NodeOutput(checked, report, ui={"text": [report]})


NODES = [WanMoEPromptEnhance, WanMoESafetyFilter]
