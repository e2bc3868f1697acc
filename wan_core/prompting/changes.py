"""What an enhancer changed, said plainly: the prompt's language, a word/character diff, and the subject check.

Tokens are words for spaced scripts and single characters for Chinese/Japanese (which have no spaces), so the
diff reads naturally in both. The subject check guards against an enhancer silently replacing what the user
asked for: the subject terms are the ones the user gives (all must survive), or else the content words of the
prompt's first clause (for Chinese, the character pairs of its
words between measure words and particles), of which at least two thirds must survive.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W\u3040-\u30ff\u3400-\u9fff]+|[^\w\s]")
CLAUSE_END = re.compile(r"[,.;:!?，。；：！？、\n]")
AUTO_SHARE = 2 / 3  # of the first clause's content words that must survive when the user names no subject
STOPWORDS = frozenset(
    "a an the and or but of in on at to from with by for into onto over under through across along its his her their "
    "this that these those is are was were be being been it he she they them as while very some".split())
ZH_FILLERS = re.compile(r"[一二两三几个只位名条头匹张片群的了着在和与及正]+")  # measure words, particles


def detect_language(text: str) -> str:
    """"zh" when Chinese/Japanese characters make up at least a fifth of the letters, else "en"."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "en"
    return "zh" if sum(bool(CJK.match(c)) for c in letters) >= 0.2 * len(letters) else "en"


def tokens(text: str) -> list[str]:
    """Words, single CJK characters and punctuation marks, in order."""
    return TOKEN.findall(text)


def diff(before: str, after: str) -> list[str]:
    """Lines saying what changed from `before` to `after`: '+ added', '- removed', '~ a -> b' (unchanged runs left out).

    Each changed run is quoted from its text as written (spaces and all), from its first token to its last.
    """
    spans_a, spans_b = list(TOKEN.finditer(before)), list(TOKEN.finditer(after))
    a, b = [m.group(0) for m in spans_a], [m.group(0) for m in spans_b]

    def quote(text: str, spans: list[re.Match], i: int, j: int) -> str:
        return text[spans[i].start() : spans[j - 1].end()]

    lines = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "insert":
            lines.append(f"+ {quote(after, spans_b, j1, j2)}")
        elif op == "delete":
            lines.append(f"- {quote(before, spans_a, i1, i2)}")
        elif op == "replace":
            lines.append(f"~ {quote(before, spans_a, i1, i2)} -> {quote(after, spans_b, j1, j2)}")
    return lines


def _norm_word(word: str) -> str:
    word = word.lower()
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


@dataclass(frozen=True)
class SubjectCheck:
    """Which subject terms the enhanced text kept and lost, and whether that is enough."""

    terms: list[str]
    kept: list[str]
    missing: list[str]
    required: float  # share of terms that must be kept
    explicit: bool  # the user named the subject

    @property
    def ok(self) -> bool:
        return not self.terms or len(self.kept) >= self.required * len(self.terms) - 1e-9

    def summary(self) -> str:
        how = "the subject you named" if self.explicit else "the first clause's content words"
        if not self.terms:
            return "subject check: no subject terms to check"
        verdict = "kept" if self.ok else "LOST"
        missing = f"; missing: {', '.join(self.missing)}" if self.missing else ""
        return f"subject check ({how}): {verdict}, {len(self.kept)}/{len(self.terms)} terms present{missing}"


def subject_terms(prompt: str, subject: str = "") -> tuple[list[str], bool]:
    """The terms the check looks for and whether the user named them: `subject` split on commas, or the first
    clause's content words (Chinese: its character pairs after dropping measure words and particles)."""
    named = [t.strip() for t in re.split(r"[,，、;；]", subject) if t.strip()]
    if named:
        return named, True
    clause = CLAUSE_END.split(prompt.strip(), maxsplit=1)[0]
    if detect_language(clause) == "zh":
        pieces = [p for p in ZH_FILLERS.split("".join(CJK.findall(clause))) if p]
        pairs = [p[i : i + 2] for p in pieces for i in range(max(1, len(p) - 1))]
        return list(dict.fromkeys(pairs)), False
    words = [w for w in re.findall(r"[^\W\d_]+", clause) if len(w) > 2 and w.lower() not in STOPWORDS]
    return list(dict.fromkeys(words)), False


def check_subject(prompt: str, enhanced: str, subject: str = "") -> SubjectCheck:
    """Whether `enhanced` still contains the subject of `prompt` (see the module docstring)."""
    terms, explicit = subject_terms(prompt, subject)
    low = enhanced.lower()
    words = {_norm_word(w) for w in re.findall(r"[^\W\d_]+", low)}

    def present(term: str) -> bool:
        if CJK.search(term) or " " in term.strip():
            return term.lower() in low
        return _norm_word(term) in words

    kept = [t for t in terms if present(t)]
    return SubjectCheck(terms, kept, [t for t in terms if t not in kept], 1.0 if explicit else AUTO_SHARE, explicit)
