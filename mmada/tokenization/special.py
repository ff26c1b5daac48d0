"""Special tokens of the unified vocabulary and how to find their ids in a tokenizer.

Two tokenizers are supported with the same sequence layouts:

* the official LLaDA tokenizer (126349 entries, the last one ``<|eot_id|>`` = 126348; 126464 is only
  the embedding's padded ``llm_vocab_size``): MMaDA reuses LLaDA's *reserved* ids for its task tokens (``<|soi|>`` = 126084 … ``<|r2i|>`` = 126094; Gen-Verse/MMaDA
  training/prompting_utils.py: reserved_token_mapping), and
  ``<|mdm_mask|>`` = 126336 is the mask for text and image positions alike;
* our own tokenizers (the built-in BPE): the same tokens exist *by name*, placed first in the
  vocabulary, so their ids are looked up from the tokenizer.

Image code ``c`` is token ``image_offset + c`` where ``image_offset == len(text tokenizer)``, as in
every official trainer (``len(uni_prompting.text_tokenizer)``) and the demo (Gen-Verse/MMaDA app.py:
``get_code(image) + 126349``). So the released checkpoints hold image codes at [126349, 134541) of
their 134656-row embedding. A checkpoint's ``llm_vocab_size`` only bounds the offset
(:func:`check_vocab`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from mmada.errors import VocabError

# Order matters for our own tokenizers: these get ids 0, 1, 2, … (see BUILTIN_TOKEN_IDS).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|startoftext|>",  # bos
    "<|endoftext|>",  # eos, also the text padding token
    "<|mdm_mask|>",  # the diffusion mask token
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|soi|>",
    "<|eoi|>",
    "<|sov|>",
    "<|eov|>",
    "<|t2i|>",
    "<|mmu|>",
    "<|t2v|>",
    "<|v2v|>",
    "<|lvg|>",
    "[iPAD]",
    "<|r2i|>",
)

# Official LLaDA / MMaDA ids (reserved-token reuse in MMaDA's prompting_utils).
OFFICIAL_IDS: dict[str, int] = {
    "<|startoftext|>": 126080,
    "<|endoftext|>": 126081,
    "<|mdm_mask|>": 126336,
    "<|eot_id|>": 126348,
    "<|soi|>": 126084,
    "<|eoi|>": 126085,
    "<|sov|>": 126086,
    "<|eov|>": 126087,
    "<|t2i|>": 126088,
    "<|mmu|>": 126089,
    "<|t2v|>": 126090,
    "<|v2v|>": 126091,
    "<|lvg|>": 126092,
    "[iPAD]": 126093,
    "<|r2i|>": 126094,
}
# len() of the LLaDA tokenizer: the image offset of the released MMaDA checkpoints.
LLADA_TOKENIZER_LEN = 126349

# Token string -> SpecialTokenIds field name.
_FIELD = {
    "<|startoftext|>": "bos", "<|endoftext|>": "eos", "<|mdm_mask|>": "mask",
    "<|start_header_id|>": "start_header", "<|end_header_id|>": "end_header", "<|eot_id|>": "eot",
    "<|soi|>": "soi", "<|eoi|>": "eoi", "<|sov|>": "sov", "<|eov|>": "eov", "<|t2i|>": "t2i",
    "<|mmu|>": "mmu", "<|t2v|>": "t2v", "<|v2v|>": "v2v", "<|lvg|>": "lvg", "[iPAD]": "ipad", "<|r2i|>": "r2i",
}


@dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of the special tokens, plus where image codes start in the unified vocabulary."""

    bos: int
    eos: int
    mask: int
    eot: int
    soi: int
    eoi: int
    sov: int
    eov: int
    t2i: int
    mmu: int
    t2v: int
    v2v: int
    lvg: int
    ipad: int
    r2i: int
    image_offset: int
    # Chat header tokens: named in both tokenizers (ids looked up, not part of the official table).
    start_header: int | None = None
    end_header: int | None = None

    @property
    def pad(self) -> int:
        """Text padding uses EOS (the model learns to emit EOS fill), as in LLaDA/MMaDA."""
        return self.eos

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def _from_map(cls, ids: dict[str, int], image_offset: int) -> SpecialTokenIds:
        return cls(**{_FIELD[tok]: i for tok, i in ids.items() if tok in _FIELD}, image_offset=image_offset)

    @classmethod
    def official(cls) -> SpecialTokenIds:
        """The ids MMaDA uses with the LLaDA tokenizer (image offset 126349 = its length)."""
        return cls._from_map(OFFICIAL_IDS, LLADA_TOKENIZER_LEN)

    @classmethod
    def from_tokenizer(cls, tokenizer) -> SpecialTokenIds:
        """Resolve ids from a tokenizer: by name, or the official reserved ids for LLaDA's tokenizer."""
        vocab = tokenizer.get_vocab()
        n = len(tokenizer)
        if all(tok in vocab for tok in SPECIAL_TOKENS):
            return cls._from_map({tok: vocab[tok] for tok in SPECIAL_TOKENS}, n)
        # The LLaDA tokenizer names the MMaDA task tokens as reserved tokens; trust the official
        # ids only if the tokens LLaDA does name are where the official table says.
        named = ("<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|eot_id|>")
        if all(vocab.get(tok) == OFFICIAL_IDS[tok] for tok in named):
            # The offset is the tokenizer's own length (126349 for LLaDA's), never a constant.
            return replace(cls.official(), image_offset=n, start_header=vocab.get("<|start_header_id|>"),
                           end_header=vocab.get("<|end_header_id|>"))
        missing = [tok for tok in SPECIAL_TOKENS if tok not in vocab]
        raise VocabError(f"tokenizer lacks the special tokens {missing} and is not the LLaDA tokenizer")


def check_vocab(special: SpecialTokenIds, config) -> None:
    """Check that a tokenizer's ids and a model config describe the same unified vocabulary.

    The text tokenizer must fit the checkpoint's text rows (``len(tokenizer) <= llm_vocab_size``;
    LLaDA: 126349 <= 126464) and the image codes placed after it must fit the embedding
    (``len(tokenizer) + codebook_size <= vocab_size``; MMaDA-8B: 126349 + 8192 <= 134656).
    """
    if special.image_offset > config.llm_vocab_size:
        raise VocabError(
            f"text tokenizer has {special.image_offset} tokens but the checkpoint's llm_vocab_size is "
            f"{config.llm_vocab_size}: its text ids would fall outside the checkpoint's text rows"
        )
    if special.mask != config.mask_token_id:
        raise VocabError(
            f"tokenizer mask token id {special.mask} != checkpoint mask_token_id {config.mask_token_id}"
        )
    if special.image_offset + config.codebook_size > config.vocab_size:
        raise VocabError(
            f"image offset {special.image_offset} + codebook_size {config.codebook_size} exceeds the "
            f"checkpoint vocab_size {config.vocab_size}"
        )
