"""Prompt enhancement, both modes, with a report of everything that changed.

`template`: deterministic, no model (see `template`). `llm`: a local causal LM rewrites the prompt (see `llm`);
its rewrite must keep the user's subject (see `changes.check_subject`), otherwise, by `on_subject_lost`, the
user's prompt is used unchanged ("keep original", the default, as the official code falls back to the original
prompt when extension fails), the run stops with an error ("error"), or the rewrite is used and flagged
("use enhanced"). Either way the report shows the rewrite and its diff against the user's prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .changes import SubjectCheck, check_subject, detect_language, diff
from .llm import CausalLM, generate
from .template import expand

MODES = ("template", "llm")
LANGUAGES = ("auto", "en", "zh")
ON_SUBJECT_LOST = ("keep original", "error", "use enhanced")


class SubjectLost(ValueError):
    """The LLM's rewrite dropped the user's subject and on_subject_lost is "error"."""


@dataclass
class EnhanceResult:
    """What goes to the text encoder (`text`), what the enhancer proposed, and the notes behind the choice."""

    prompt: str
    text: str
    mode: str
    language: str
    proposed: str
    subject: SubjectCheck | None = None
    notes: list[str] = field(default_factory=list)

    def report(self) -> str:
        """The node's 'changes' text: mode, language, notes, subject check and the diff of prompt -> result."""
        lines = [f"mode {self.mode}, language {self.language}"] + self.notes
        if self.subject is not None:
            lines.append(self.subject.summary())
        if self.proposed != self.text:
            lines += ["the enhancer proposed (not used):", self.proposed or "(nothing)",
                      "its changes to your prompt:"] + (diff(self.prompt, self.proposed) or ["(none)"])
        lines.append("changes to your prompt in the output:")
        lines += diff(self.prompt, self.text) or ["(none: the output is your prompt)"]
        return "\n".join(lines)


def resolve_language(prompt: str, language: str) -> str:
    """"en" or "zh": the one asked for, or the prompt's own for "auto"."""
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    return detect_language(prompt) if language == "auto" else language


def enhance_template(prompt: str, language: str, choices: dict[str, str], *, scene: str = "",
                     skip_covered: bool = True) -> EnhanceResult:
    """Template mode: the prompt kept word for word, the chosen details appended."""
    lang = resolve_language(prompt, language)
    result = expand(prompt, lang, choices, scene=scene, skip_covered=skip_covered)
    notes = [f"added {name}: {text}" for name, text in result.added.items()]
    notes += [f"left {name} to your prompt (it mentions '{word}')" for name, word in result.skipped.items()]
    return EnhanceResult(prompt, result.text, "template", lang, result.text, notes=notes)


def enhance_llm(lm: CausalLM, prompt: str, language: str, *, subject: str = "", on_subject_lost: str = "keep original",
                max_new_tokens: int = 256, temperature: float = 0.0, seed: int = 0) -> EnhanceResult:
    """LLM mode: the model's rewrite, used only if it keeps the subject (see the module docstring)."""
    if on_subject_lost not in ON_SUBJECT_LOST:
        raise ValueError(f"on_subject_lost must be one of {ON_SUBJECT_LOST}, got {on_subject_lost!r}")
    lang = resolve_language(prompt, language)
    proposed = generate(lm, prompt, lang, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    check = check_subject(prompt, proposed, subject)
    result = EnhanceResult(prompt, proposed, "llm", lang, proposed, check, [f"model {lm.name}"])
    if not proposed:
        result.text = prompt
        result.notes.append("the model returned no text; your prompt is used unchanged")
    elif not check.ok and on_subject_lost == "error":
        raise SubjectLost(f"the language model's rewrite dropped your subject (missing: {', '.join(check.missing)}). "
                          "Name the subject in 'subject', try another seed or model, or set on_subject_lost to "
                          "'keep original'. The rewrite was: " + proposed[:500])
    elif not check.ok and on_subject_lost == "keep original":
        result.text = prompt
        result.notes.append("the rewrite dropped your subject; your prompt is used unchanged")
    elif not check.ok:
        result.notes.append("WARNING: the rewrite dropped your subject and is used anyway (on_subject_lost)")
    return result
