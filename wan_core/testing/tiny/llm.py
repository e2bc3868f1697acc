"""A tiny random causal LM folder in the layout of a Hugging Face chat model (Qwen2.5-*-Instruct style).

What `save_pretrained` writes for Qwen/Qwen2.5-3B-Instruct (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json with a ChatML chat template), at 2 layers and 32 features. The tokenizer is a byte-level BPE
trained here, offline, on a few sentences in English and Chinese (so every text encodes, no unknown tokens).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

PUBLIC_NAME = "Qwen2.5-3B-Instruct"  # the folder users download Qwen/Qwen2.5-3B-Instruct into (models/LLM)
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = [
    "A red fox trots through fresh snow in a sunlit birch forest, cinematic, soft golden light.",
    "The camera slowly pushes in on a lighthouse at dusk while waves crash on the rocks.",
    "一只红狐狸在阳光照耀的白桦林中踏雪小跑，电影质感，柔和的金色光线。",
    "镜头缓缓推进，黄昏时分的灯塔，海浪拍打着礁石。",
]


def build_tokenizer(vocab_size: int = 400, chat_template: bool = True):
    """A PreTrainedTokenizerFast: byte-level BPE trained on CORPUS, ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHATML if chat_template else None)


def write_llm_folder(path: str | os.PathLike, *, seed: int = 0, chat_template: bool = True) -> Path:
    """Write a random tiny Qwen2ForCausalLM with its tokenizer to `path` (save_pretrained layout)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer(chat_template=chat_template)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, initializer_range=0.5)  # context-sensitive logits
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
