"""Template prompt enhancement: the user's prompt kept word for word, followed by chosen details in its language.

Wan2.2's prompt guidance describes a prompt as subject and action, then scene, then camera language (shot
size, camera movement), lighting, colour and style; short prompts benefit from having these spelled out.
This module appends the ones the user picks, in that order, as short sentences in English or Chinese:

    prompt  +  scene (free text)  +  shot, camera movement  +  lighting  +  colour tone  +  style

A field whose aspect the prompt already talks about (detected by keywords, e.g. "light"/"光" for lighting)
is left to the prompt when `skip_covered` is on, so the template never contradicts what the user wrote.
Nothing is random: the same inputs always give the same text.
"""

from __future__ import annotations

from dataclasses import dataclass

NONE = "none"

# field -> option -> (English, Chinese). Option names are what the node's combos show.
FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    "shot": {
        "close-up": ("Close-up shot", "特写镜头"),
        "medium shot": ("Medium shot", "中景镜头"),
        "wide shot": ("Wide shot", "全景镜头"),
        "extreme wide shot": ("Extreme wide establishing shot", "大远景镜头"),
        "low angle": ("Low-angle shot looking up", "低角度仰拍"),
        "aerial": ("Aerial view from above", "高空俯拍视角"),
    },
    "camera": {
        "static": ("the camera stays still", "镜头固定不动"),
        "slow push-in": ("the camera slowly pushes in", "镜头缓慢推进"),
        "tracking": ("the camera smoothly tracks the subject", "镜头平稳跟随主体"),
        "pan": ("the camera pans slowly across the scene", "镜头缓缓横摇"),
        "orbit": ("the camera orbits around the subject", "镜头环绕主体运动"),
        "handheld": ("handheld camera with slight natural shake", "手持摄影，画面轻微晃动"),
    },
    "lighting": {
        "soft daylight": ("Soft natural daylight", "柔和的自然光"),
        "golden hour": ("Warm golden-hour sunlight with long shadows", "温暖的黄昏阳光，影子修长"),
        "overcast": ("Diffused overcast light", "阴天的柔和漫射光"),
        "backlight": ("Backlit with a glowing rim light", "逆光，主体边缘有明亮的轮廓光"),
        "night neon": ("Night scene lit by colourful neon lights", "夜景，五彩霓虹灯照明"),
        "studio": ("Even studio lighting", "均匀的影棚灯光"),
    },
    "color": {
        "warm": ("Warm colour tones", "暖色调"),
        "cool": ("Cool colour tones", "冷色调"),
        "vivid": ("Vivid, saturated colours", "色彩鲜艳饱和"),
        "muted": ("Muted, natural colours", "色彩柔和自然"),
        "black and white": ("Black and white", "黑白画面"),
    },
    "style": {
        "cinematic": ("Cinematic, film-like image with fine detail", "电影质感，画面细腻"),
        "documentary": ("Realistic documentary style", "写实纪录片风格"),
        "anime": ("Japanese anime style", "日本动画风格"),
        "3d animation": ("3D animated film style", "三维动画电影风格"),
        "watercolor": ("Watercolour painting style", "水彩画风格"),
        "film noir": ("Film noir style with deep shadows", "黑色电影风格，阴影浓重"),
    },
}
ORDER = ("shot", "camera", "lighting", "color", "style")
# Words that show the prompt already talks about a field (lower-case English, or Chinese substrings).
COVERED_BY: dict[str, tuple[str, ...]] = {
    "shot": ("close-up", "close up", "closeup", "wide shot", "medium shot", "aerial", "low angle", "low-angle",
             "bird's-eye", "特写", "近景", "中景", "全景", "远景", "俯拍", "仰拍", "航拍"),
    "camera": ("camera", "tracking", "dolly", "pan ", "pans", "zoom", "orbit", "handheld", "镜头", "跟拍", "运镜",
               "推进", "拉远", "横摇", "环绕"),
    "lighting": ("light", "lit ", "sunlit", "sunlight", "glow", "shadow", "backlit", "neon", "光", "照明", "阴影"),
    "color": ("colour", "color", "tone", "hue", "black and white", "monochrome", "色调", "色彩", "黑白"),
    "style": ("style", "cinematic", "anime", "cartoon", "painting", "documentary", "photoreal", "风格", "电影", "动画",
              "画风", "写实"),
}


@dataclass(frozen=True)
class TemplateResult:
    """The enhanced prompt and what the template did with each field."""

    text: str
    added: dict[str, str]  # field -> the text appended
    skipped: dict[str, str]  # field -> why it was not appended (the keyword the prompt covers it with)


def covered(prompt: str, field_name: str) -> str | None:
    """The keyword by which `prompt` already covers a field, or None."""
    text = f" {prompt.lower()} "
    return next((k for k in COVERED_BY[field_name] if k in text), None)


def _sentence_end(text: str, language: str) -> str:
    text = text.strip()
    if not text or text[-1] in ".!?。！？…":
        return text
    return text + ("。" if language == "zh" else ".")


def _join(parts: list[str], language: str) -> str:
    """Sentences joined in the language's way (Chinese: no spaces)."""
    parts = [_sentence_end(p, language) for p in parts if p.strip()]
    return ("" if language == "zh" else " ").join(parts)


def expand(prompt: str, language: str, choices: dict[str, str], *, scene: str = "",
           skip_covered: bool = True) -> TemplateResult:
    """The prompt followed by the chosen fields (option names from FIELDS, or "none") in `language` ("en"/"zh")."""
    if language not in ("en", "zh"):
        raise ValueError(f"language must be 'en' or 'zh', got {language!r}")
    unknown = {f: o for f, o in choices.items() if f not in FIELDS or (o != NONE and o not in FIELDS[f])}
    if unknown:
        raise ValueError(f"unknown template choices {unknown}; fields and options are {{{', '.join(FIELDS)}}}")
    which = 1 if language == "zh" else 0
    added, skipped = {}, {}
    for name in ORDER:
        option = choices.get(name, NONE)
        if option == NONE:
            continue
        hit = covered(prompt, name) if skip_covered else None
        if hit:
            skipped[name] = hit
        else:
            added[name] = FIELDS[name][option][which]
    camera_language = ("，" if language == "zh" else ", ").join(added[k] for k in ("shot", "camera") if k in added)
    capital = lambda text: text[:1].upper() + text[1:]  # noqa: E731 - sentences the template adds start upper-case
    sentences = [prompt, capital(scene.strip()), capital(camera_language)]
    sentences += [added[k] for k in ("lighting", "color", "style") if k in added]
    return TemplateResult(_join(sentences, language), added, skipped)
