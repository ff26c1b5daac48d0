"""Text tokenizers: the built-in byte-level BPE (no download needed) and loading any other.

``load_text_tokenizer("builtin")`` returns a 1024-token byte-level BPE trained with HF
``tokenizers`` on the built-in corpus (arithmetic word problems, shapes captions and VQA, digit
captions, the chat/think scaffolding). Training is deterministic and takes about a second; the
result is cached under ``$MMADA_CACHE`` (default ``~/.cache/mmada``) as a ``tokenizer.json`` and
loaded with ``PreTrainedTokenizerFast``. Any saved tokenizer directory or HF repo id (e.g.
``GSAI-ML/LLaDA-8B-Instruct``) loads through ``AutoTokenizer`` without remote code.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mmada.builtin.arithmetic import generate_arithmetic
from mmada.builtin.shapes import generate_shapes
from mmada.errors import VocabError
from mmada.files import atomic_dir
from mmada.tokenization.special import SPECIAL_TOKENS

BUILTIN_VOCAB_SIZE = 1024
BUILTIN_VERSION = "3"  # bump when the corpus or the training recipe changes (2: single-digit tokens, \boxed{};
# 3: the reasoning instructions are one token each)

# The chat format MMaDA was trained and is run with: the chat_template that Gen-Verse/MMaDA generate.py
# (main) and app.py install on the LLaDA tokenizer, replacing the one it ships (docs/model.md): bos
# once, then for every message <|start_header_id|>role<|end_header_id|>\n trimmed content <|eot_id|>,
# then the assistant header. The one definition: load_text_tokenizer installs it on every tokenizer
# with the header tokens (so inference, rollouts and evaluation use it), and curation renders SFT
# samples through it (mmada.data.templates.render).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n{% endif %}"
)
THINK_PREFIX = (
    "You should first think about the reasoning process in the mind and then provide the user with the "
    "answer. The reasoning process is enclosed within <think> </think> tags, i.e. <think> reasoning "
    "process here </think> answer here\n"
)
# Reasoning-to-image: the user turn asks for a detailed description first (Gen-Verse/MMaDA
# parquet/my_dataset.py, the r2i samples); the answer is <think>{detailed description}</think>, then the image.
R2I_PREFIX = (
    "You should first think out a more detailed version of the description and then provide the user with the "
    "image. The detailed description is enclosed within <think> </think> tags, i.e. <think> detailed description "
    "here </think> image here\n"
)
_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*(.*)$", re.S)


def split_think(content: str) -> tuple[str | None, str]:
    """``<think>t</think> a`` → ``(t, a)`` (both stripped); text without a think block → ``(None, text)``."""
    m = _THINK.match(content)
    if not m:
        return None, content
    return m.group(1).strip(), m.group(2).strip()


def cache_dir() -> Path:
    return Path(os.environ.get("MMADA_CACHE", Path.home() / ".cache" / "mmada"))


def builtin_corpus() -> list[str]:
    """The deterministic text the built-in tokenizer is trained on."""
    texts = [THINK_PREFIX, "user", "assistant", "system", "The answer is", "a handwritten digit"]
    texts += [f"a handwritten digit {d}" for d in range(10)]
    for r in generate_arithmetic(3000, seed=12345, difficulty=(1, 5)):
        texts += [r["question"], f"<think>{r['thinking']}</think> The answer is {r['answer']}.",
                  f"<think>{r['thinking']}</think> \\boxed{{{r['answer']}}}"]  # the curated answer format
    for r in generate_shapes(1500, seed=12345):
        texts.append(r["caption"])
        for qa in r["vqa"]:
            texts += [qa["question"], f"<think>{qa['thinking']}</think> {qa['answer']}"]
    return texts


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = BUILTIN_VOCAB_SIZE, out_dir: str | Path | None = None
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE with our special tokens first (ids 0…16) and exactly ``vocab_size`` tokens.

    If the corpus yields fewer merges than needed, ``<|reserved_i|>`` tokens fill the vocabulary so
    ``len(tokenizer) == vocab_size`` (the image-token offset of the matching model config).
    """
    if vocab_size <= len(SPECIAL_TOKENS) + 256:
        raise VocabError(f"vocab_size={vocab_size} is too small for 256 bytes + {len(SPECIAL_TOKENS)} special tokens")
    tok = Tokenizer(models.BPE())
    # Digits are single tokens, as in LLaMA-family tokenizers: "17" in a question and in a trace are
    # the same ids ("Ġ", "1", "7"), so copying and column arithmetic are learnable by a tiny model
    # (with merged " 17" / "17" tokens a 4M model did not learn to copy operands in 1000 SFT steps).
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    # MMaDA's two instructions (THINK_PREFIX, R2I_PREFIX: 50 and 47 tokens as BPE pieces) are one token
    # each, as whole strings (not special: they decode back to their text). Every reasoning row starts
    # with one, so a 4M model spends ~2x less compute per row on a constant, and asking for reasoning
    # is the same string everywhere (curation, rollouts, evaluation, the playground).
    instructions = [AddedToken(t, normalized=False, special=False) for t in (THINK_PREFIX, R2I_PREFIX)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(instructions),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens(instructions)
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:
        tok.add_special_tokens([f"<|reserved_{i}|>" for i in range(missing)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        mask_token="<|mdm_mask|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    if len(fast) != vocab_size:
        raise VocabError(f"trained tokenizer has {len(fast)} tokens, expected {vocab_size}")
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def _builtin_dir() -> Path:
    key = hashlib.sha256(f"{BUILTIN_VERSION}:{BUILTIN_VOCAB_SIZE}".encode()).hexdigest()[:12]
    return cache_dir() / "tokenizers" / f"builtin-{key}"


def builtin_tokenizer() -> PreTrainedTokenizerFast:
    """The built-in tokenizer, trained once and cached (written atomically)."""
    target = _builtin_dir()
    if not (target / "tokenizer.json").exists():
        with atomic_dir(target, replace=False) as tmp:  # another process may win the race: use its copy
            train_bpe_tokenizer(builtin_corpus(), BUILTIN_VOCAB_SIZE, tmp)
    return load_text_tokenizer(str(target))


def load_text_tokenizer(name_or_path: str = "builtin") -> PreTrainedTokenizerFast:
    """``"builtin"``, a local tokenizer directory, or an HF repo id (loaded without remote code).

    A tokenizer with the chat header tokens (LLaDA's, ours) gets :data:`CHAT_TEMPLATE` whatever
    template it ships: the official code always installs that one (LLaDA's own template puts a
    blank line after each header, which MMaDA was not trained with).
    """
    if name_or_path == "builtin":
        return builtin_tokenizer()
    tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    vocab = tok.get_vocab()
    if all(t in vocab for t in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")):
        tok.chat_template = CHAT_TEMPLATE
    return tok
