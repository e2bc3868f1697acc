"""Prompt rewriting with a local causal language model (e.g. Qwen2.5-3B/7B/14B-Instruct), offline.

Like the official prompt extension (a "film director" system prompt asking a chat model to add scene, lighting,
shot and style details), with our own system prompts in English and Chinese that also forbid replacing
anything the user wrote. The model folder is what `save_pretrained` writes (config.json, safetensors weights,
tokenizer files); it is read with transformers' AutoModelForCausalLM / AutoTokenizer from local files only.
A tokenizer with a chat template gets system + user messages; one without gets a plain "System/User/Assistant"
text. Generation is greedy at temperature 0, otherwise sampled with the given seed (reproducible).
"""

from __future__ import annotations

import os
import re

import torch
import torch.nn as nn

SYSTEM_PROMPTS = {
    "en": (
        "You are a film director writing the shot description for a text-to-video model. Rewrite the user's prompt "
        "as one vivid paragraph of 60 to 120 words describing a single continuous shot of about five seconds. Keep "
        "the user's subject, its number, appearance, colours and action exactly as given: do not replace, rename or "
        "remove anything the user wrote; only add to it. Add what is missing: the setting and background, the "
        "lighting (source, quality, time of day), the shot size and camera angle, the camera movement, the "
        "composition, the colour tone and the visual style. Describe only what can be seen: no sound, no on-screen "
        "text, no lists or headings. Write in English and reply with the rewritten prompt only."
    ),
    "zh": (
        "你是一名电影导演，正在为文生视频模型撰写镜头描述。请把用户的提示词改写成一段80到200字的生动描述，对应一个约五秒的连续镜头。"
        "保留用户给出的主体、数量、外貌、颜色和动作，不得替换、改名或删除用户写下的任何内容，只能在此基础上补充。"
        "补充缺失的信息：场景与背景、光线（光源、质感、时间）、景别与拍摄角度、运镜方式、构图、色调和画面风格。"
        "只描述看得见的画面，不写声音、屏幕文字、列表或标题。用中文写，只回复改写后的提示词。"
    ),
}
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")  # control characters; U+FFFD: bytes cut mid-character
_LABEL = re.compile(r"^(rewritten prompt|prompt|提示词|改写后的提示词)\s*[:：]\s*", re.IGNORECASE)


class CausalLM(nn.Module):
    """A causal LM and its tokenizer, as one module the model cache can move between devices."""

    def __init__(self, model: nn.Module, tokenizer, name: str) -> None:
        super().__init__()
        self.model, self.tokenizer, self.name = model, tokenizer, name


def _dtype_kwargs(dtype: torch.dtype) -> dict:
    """transformers >= 4.56 takes `dtype`, older versions `torch_dtype`."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def load_causal_lm(folder: str | os.PathLike, *, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> CausalLM:
    """The model folder's causal LM and tokenizer, from local files only (never downloads)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = os.path.basename(os.path.normpath(folder))
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"language model folder '{name}' has no config.json; it must be a Hugging Face model "
                                "folder (config.json, *.safetensors, tokenizer files), e.g. Qwen2.5-3B-Instruct")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                     **_dtype_kwargs(dtype))
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"language model folder '{name}' could not be loaded as a causal LM with its tokenizer "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    return CausalLM(model.to(dtype).eval(), tokenizer, name).to(device)


def chat_text(tokenizer, system: str, user: str) -> str:
    """The model's input text: its chat template with a system and a user message, or a plain transcript."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"System: {system}\n\nUser: {user}\n\nAssistant:"


def clean_reply(text: str) -> str:
    """The reply without control characters, surrounding whitespace, quotes or a leading 'Prompt:' label, whitespace
    collapsed."""
    text = _UNPRINTABLE.sub("", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = _LABEL.sub("", text).strip()
    if len(text) >= 2 and text[0] in "\"'“「`" and text[-1] in "\"'”」`":
        text = text[1:-1].strip()
    return text


@torch.inference_mode()
def generate(lm: CausalLM, prompt: str, language: str, *, max_new_tokens: int = 256, temperature: float = 0.0,
             seed: int = 0) -> str:
    """The model's rewrite of `prompt` under our system prompt for `language`, cleaned (see `clean_reply`)."""
    tok, model = lm.tokenizer, lm.model
    device = next(model.parameters()).device
    encoded = tok(chat_text(tok, SYSTEM_PROMPTS[language], prompt), return_tensors="pt", add_special_tokens=False)
    ids = encoded["input_ids"].to(device)
    options = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0,
               "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}
    if temperature > 0:
        options |= {"temperature": temperature, "top_p": 0.9, "top_k": 0}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **options)
    return clean_reply(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
