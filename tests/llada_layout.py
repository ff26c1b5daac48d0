"""A text tokenizer and tiny model configs with the *official* LLaDA/MMaDA vocabulary layout.

The LLaDA tokenizer has 126349 entries: bos ``<|startoftext|>`` = 126080, eos ``<|endoftext|>`` =
126081, ``<|mdm_mask|>`` = 126336, the chat header tokens at 126346/126347 and ``<|eot_id|>`` =
126348 (the last id); MMaDA's task tokens reuse LLaDA's reserved ids 126084 … 126094, which the
tokenizer names as plain reserved tokens. It cannot be downloaded here, so :func:`llada_tokenizer_dir`
builds one with that exact layout: the built-in byte-level BPE's merges and ordinary tokens at the
low ids (so curated text tokenizes as compactly as with the built-in tokenizer), the named special
tokens at the official ids and ``<|reserved_token_i|>`` everywhere else. It is saved with
``save_pretrained`` and meant to be loaded the way a checkpoint's tokenizer is
(``mmada.tokenization.load_text_tokenizer(dir)``).

The model side: ``llm_vocab_size`` 126464 (LLaDA's padded embedding), image codes after the
tokenizer (offset 126349), a small hidden size.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

LLADA_LEN = 126349
LLADA_LLM_VOCAB = 126464
NAMED = {"<|startoftext|>": 126080, "<|endoftext|>": 126081, "<|mdm_mask|>": 126336,
         "<|start_header_id|>": 126346, "<|end_header_id|>": 126347, "<|eot_id|>": 126348}
# A Llama-3-style template like the one LLaDA's tokenizer ships (blank line after the header):
# not what MMaDA was trained with, so loading must replace it.
SHIPPED_TEMPLATE = (
    "{% for m in messages %}{% set c = '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
    "m['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set c = bos_token + c %}{% endif %}"
    "{{ c }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)


def llada_tokenizer_dir(out: Path) -> Path:
    """Save a 126349-entry tokenizer with the LLaDA layout to ``out`` (built once per path)."""
    out = Path(out)
    if (out / "tokenizer.json").is_file():
        return out
    from mmada.tokenization import SPECIAL_TOKENS, load_text_tokenizer

    base = json.loads(load_text_tokenizer("builtin").backend_tokenizer.to_str())
    old = base["model"]["vocab"]
    ordinary = [t for t, _ in sorted(old.items(), key=lambda kv: kv[1])
                if t not in SPECIAL_TOKENS and not t.startswith("<|reserved_")]
    by_id = {i: t for t, i in NAMED.items()}
    vocab, k = {}, 0
    for i in range(LLADA_LEN):
        if i in by_id:
            vocab[by_id[i]] = i
        elif k < len(ordinary):
            vocab[ordinary[k]] = i
            k += 1
        else:
            vocab[f"<|reserved_token_{i}|>"] = i
    base["model"]["vocab"] = vocab
    base["added_tokens"] = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for t, i in sorted(NAMED.items(), key=lambda x: x[1])]
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(base)),
                                  bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.chat_template = SHIPPED_TEMPLATE
    assert len(tok) == LLADA_LEN, len(tok)
    tok.save_pretrained(str(out))
    return out


def llada_overrides(codebook_size: int = 1024, **extra) -> dict:
    """Model-config fields of a small model with the official vocabulary layout (text rows 126464,
    image codes after them; the official MMaDA embedding is 126464 + 8192 = 134656 rows)."""
    return {"llm_vocab_size": LLADA_LLM_VOCAB, "codebook_size": codebook_size,
            "vocab_size": LLADA_LLM_VOCAB + codebook_size, "mask_token_id": 126336, "bos_token_id": 126080,
            "eos_token_id": 126081, "pad_token_id": 126081, **extra}
