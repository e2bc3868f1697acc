"""Sensitive-term filter for prompts: term lists from text files, a matcher that sees through simple disguises.

Term files are UTF-8 text, one term per line, `#` comment lines and blank lines ignored (the shipped ones are
`terms/en.txt` and `terms/zh.txt`; users add files of their own). Before matching, the prompt and the terms are
normalised: Unicode NFKC (full-width letters and digits become ASCII), case folded, zero-width characters and
soft hyphens removed. Then:
  * a term written in a script without spaces between words (Chinese, Japanese, Korean, Thai) matches as a
    substring of the prompt with its spaces and punctuation removed ("色 情" and "色-情" match "色情");
  * any other term must match whole words (a neighbouring Chinese character counts as a word boundary); spaces inside it match any run of spaces, hyphens, dots or
    underscores, and a trailing `*` also accepts longer words ("decapitat*" matches "decapitated").
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

TERMS_DIR = Path(__file__).with_name("terms")
MODES = ("block", "warn")
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
_UNSPACED_CHARS = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\u0e00-\u0e7f"
_UNSPACED = re.compile(f"[{_UNSPACED_CHARS}]")
_WORD = rf"[^\W{_UNSPACED_CHARS}]"  # a letter or digit of a spaced script: what a whole-word match may not touch
_SEPARATORS = re.compile(r"[\s\W_]+")


class PromptBlocked(ValueError):
    """The prompt contains terms of the active lists and the filter is in block mode; the message names them."""


def normalize(text: str) -> str:
    """NFKC, case-folded, without zero-width characters, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).translate(_INVISIBLE).casefold()
    return re.sub(r"\s+", " ", text).strip()


@dataclass(frozen=True)
class Term:
    """One entry of a list: its text as written, the file it came from, and its compiled matcher."""

    text: str
    source: str
    pattern: re.Pattern
    unspaced: bool


def compile_term(text: str, source: str) -> Term | None:
    """A Term for one line of a list (None for blank lines and comments)."""
    raw = text.strip()
    if not raw or raw.startswith("#"):
        return None
    norm = normalize(raw)
    wildcard = norm.endswith("*")
    norm = norm.rstrip("*").strip()
    if not norm:
        return None
    if _UNSPACED.search(norm):
        return Term(raw, source, re.compile(re.escape(_SEPARATORS.sub("", norm))), True)
    words = [re.escape(w) for w in _SEPARATORS.split(norm) if w]
    body = r"[\s\-._]+".join(words) + (f"{_WORD}*" if wildcard else "")
    return Term(raw, source, re.compile(f"(?<!{_WORD}){body}(?!{_WORD})"), False)


@dataclass
class TermList:
    """The active terms, and which sources they came from."""

    terms: list[Term] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def add_lines(self, lines: list[str], source: str) -> None:
        """Add the terms of some lines (a file's, or the node's own box) under the name `source`."""
        self.terms += [t for t in (compile_term(line, source) for line in lines) if t is not None]
        self.sources.append(source)

    def add_file(self, path: str | os.PathLike) -> None:
        """Add a term file's entries (UTF-8; the error names the file when it is not readable text)."""
        name = os.path.basename(os.fspath(path))
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise ValueError(f"term list '{name}' is not UTF-8 text; save it as UTF-8, one term per line") from None
        self.add_lines(text.splitlines(), name)


def default_term_files() -> list[Path]:
    """The shipped term files (terms/*.txt), in name order."""
    return sorted(TERMS_DIR.glob("*.txt"))


@dataclass(frozen=True)
class Match:
    """A term found in the prompt: the term as its list writes it, that list, and the prompt text it matched."""

    term: str
    source: str
    found: str


def find_terms(prompt: str, terms: TermList) -> list[Match]:
    """Every term of `terms` found in `prompt` (each term once, in list order)."""
    text = normalize(prompt)
    squeezed = _SEPARATORS.sub("", text)
    matches = []
    for term in terms.terms:
        hit = term.pattern.search(squeezed if term.unspaced else text)
        if hit:
            matches.append(Match(term.text, term.source, hit.group(0)))
    return matches


def describe(matches: list[Match]) -> str:
    """"'gore' (en.txt), '血腥' (zh.txt)"."""
    return ", ".join(f"'{m.term}' ({m.source})" for m in matches)


def check_prompt(prompt: str, terms: TermList, mode: str) -> tuple[list[Match], str]:
    """Match `prompt` against `terms`: raises PromptBlocked in block mode when a term is found; returns the matches
    and a one-line report otherwise."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    matches = find_terms(prompt, terms)
    checked = f"{len(terms.terms)} terms from {', '.join(terms.sources) or 'no list'}"
    if not matches:
        return matches, f"no sensitive terms found ({checked})"
    if mode == "block":
        raise PromptBlocked(f"the prompt contains sensitive terms: {describe(matches)}. Rephrase the prompt, or edit "
                            "the term lists (models/safety_terms/, or the filter's extra_terms) if this is intended.")
    return matches, f"warning: the prompt contains sensitive terms: {describe(matches)} ({checked})"
