"""prompting: what happens to a prompt before the text encoder: enhancement and the sensitive-term filter.

Owns: `template` (deterministic prompt expansion from chosen fields, in English or Chinese), `llm` (rewriting
with a local causal LM through transformers, offline, with our own system prompts), `changes` (language
detection, the word/character diff the nodes show, the check that the user's subject survived), `safety`
(user-editable multilingual term lists and the matcher), and `terms/` (the small default term files).
May import: `wan_core.memory`, `wan_core.io`, `wan_core.config`.
"""
