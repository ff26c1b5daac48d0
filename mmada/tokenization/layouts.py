"""Sequence layouts of the unified model (t2i, mmu, lm, chat/``<think>``) and their prompt masks.

Layouts follow the official MMaDA prompting (Gen-Verse/MMaDA training/prompting_utils.py), expressed in ids
so they work with the LLaDA tokenizer and with ours:

    t2i   [iPAD]*k <|t2i|> <bos> caption <eos> <|soi|> img_1 … img_N <|eoi|>     (left-padded text)
    mmu   <|mmu|> <|soi|> img_1 … img_N <|eoi|> chat-prompt answer <eos> <eos> …  (EOS right-padded)
    lm    <bos> text <eos> <eos> …                                               (no prompt)
    chat  chat-prompt answer <eos> <eos> …                                       (EOS right-padded)
    r2i   <|r2i|> chat-prompt <think>trace</think> <eos> <eos> … <|soi|> img_1 … img_N <|eoi|>

r2i (reasoning to image; training/prompting_utils.py: r2i_prompt): the user turn is the caption after
the :data:`~mmada.tokenization.text.R2I_PREFIX` instruction, the answer a ``<think>`` trace (a more
detailed description), EOS-filled to a fixed text length, then the image. The prompt is the task
token, the chat prompt, ``<|soi|>`` and ``<|eoi|>``; the trace, its fill and the image are targets.

``prompt_mask`` marks what the diffusion process keeps clean (the condition); everything else is
the target, EOS padding included so the model learns where answers end. ``attention_mask`` is
False only on ``[iPAD]`` padding (EOS padding is attended, as in the reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mmada.errors import MMaDAError
from mmada.tokenization.special import SpecialTokenIds
from mmada.tokenization.text import R2I_PREFIX, THINK_PREFIX

Messages = list[dict[str, str]]


@dataclass
class SequenceBatch:
    """A batch of unified sequences; all tensors are (B, L)."""

    input_ids: torch.Tensor  # long
    attention_mask: torch.Tensor  # bool, False on [iPAD]/left padding
    prompt_mask: torch.Tensor  # bool, True where tokens are conditioning (never masked)
    image_mask: torch.Tensor  # bool, True on image-token slots

    def to(self, device) -> SequenceBatch:
        return SequenceBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.prompt_mask, self.image_mask)))


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists into (B, L) ids and a bool attention mask (False on padding)."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, L - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, L - len(s):] = True
    return ids, mask


class SequenceBuilder:
    """Builds unified sequences for one text tokenizer.

    Args:
        tokenizer: a HF tokenizer with a chat template (ours or LLaDA's).
        special: special-token ids; resolved from the tokenizer when omitted.
    """

    def __init__(self, tokenizer, special: SpecialTokenIds | None = None) -> None:
        self.tokenizer = tokenizer
        self.special = special or SpecialTokenIds.from_tokenizer(tokenizer)

    # ------------------------------------------------------------------ text pieces
    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.special.mask in ids:
            raise MMaDAError(f"text contains the mask token (id {self.special.mask}): {text[:80]!r}")
        return ids

    def chat_prompt(self, messages: Messages | str, *, think: bool = False) -> list[int]:
        """Ids of a chat prompt ending with the assistant header (the generation prompt)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if think:
            messages = [*messages[:-1], {**messages[-1], "content": THINK_PREFIX + messages[-1]["content"]}]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.encode(text)

    def _image_slots(self, image_codes: torch.Tensor | None, num_image_tokens: int | None, B: int, task: str,
                     rows: str) -> torch.Tensor:
        """(B, N) image token ids: the codes' ids, or N masks to generate when no codes are given."""
        if image_codes is None:
            if num_image_tokens is None:
                raise MMaDAError(f"{task} needs image_codes or num_image_tokens")
            return torch.full((B, num_image_tokens), self.special.mask, dtype=torch.long)
        if image_codes.shape[0] != B:
            raise MMaDAError(f"{task} got {B} {rows} but {image_codes.shape[0]} images")
        return self.image_ids(image_codes)

    def image_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Image codes (…, N) in [0, codebook) → unified token ids."""
        return codes.long() + self.special.image_offset

    # ------------------------------------------------------------------ layouts
    def t2i(
        self, captions: Sequence[str], image_codes: torch.Tensor | None = None, *, num_image_tokens: int | None = None,
        max_text_len: int = 128,
    ) -> SequenceBatch:
        """Text-to-image rows. ``image_codes`` (B, N); None gives all-mask image slots (for sampling).

        ``max_text_len`` budgets ``<bos> caption <eos>`` (longer captions are cut, keeping ``<eos>``).
        """
        sp = self.special
        B = len(captions)
        img = self._image_slots(image_codes, num_image_tokens, B, "t2i", "captions")  # (B, N)
        N = img.shape[1]
        L = max_text_len + 1 + 1 + N + 1
        ids = torch.empty((B, L), dtype=torch.long)
        attn = torch.ones((B, L), dtype=torch.bool)
        for i, cap in enumerate(captions):
            text = [sp.bos, *self.encode(cap), sp.eos]
            if len(text) > max_text_len:
                text = [*text[: max_text_len - 1], sp.eos]
            k = max_text_len - len(text)
            row = [sp.ipad] * k + [sp.t2i] + text + [sp.soi]
            ids[i, : len(row)] = torch.tensor(row)
            attn[i, :k] = False
        ids[:, max_text_len + 2 : max_text_len + 2 + N] = img
        ids[:, -1] = sp.eoi
        image_mask = torch.zeros((B, L), dtype=torch.bool)
        image_mask[:, max_text_len + 2 : max_text_len + 2 + N] = True
        return SequenceBatch(ids, attn, ~image_mask, image_mask)

    def mmu(
        self, image_codes: torch.Tensor, prompts: Sequence[Messages | str], answers: Sequence[str] | None = None,
        *, max_text_len: int = 128, think: bool = False,
    ) -> SequenceBatch:
        """Understanding rows: image prefix, chat prompt, answer + EOS fill (prompt only if ``answers`` is None)."""
        sp = self.special
        img = self.image_ids(image_codes)  # (B, N)
        B, N = img.shape
        prefix = torch.cat([torch.tensor([[sp.mmu, sp.soi]]).expand(B, 2), img, torch.full((B, 1), sp.eoi)], 1)
        out = self._prompt_answer_rows(prompts, answers, max_text_len, think)
        if answers is None:  # generation prompts: left-padded, so each row's image starts after its padding
            rows = [[*pre.tolist(), *p] for pre, p in zip(prefix, out[0])]
            ids, attn = left_pad(rows, sp.eos)
            image_mask = torch.zeros_like(attn)
            for i, r in enumerate(rows):
                start = ids.shape[1] - len(r) + 2
                image_mask[i, start : start + N] = True
            return SequenceBatch(ids, attn, attn.clone(), image_mask)
        return _mmu_rows(prefix, *out)

    def chat(
        self, prompts: Sequence[Messages | str], answers: Sequence[str] | None = None, *, max_text_len: int = 256,
        think: bool = False,
    ) -> SequenceBatch:
        """Chat/SFT rows (answers given: right EOS fill) or left-padded generation prompts (answers None)."""
        out = self._prompt_answer_rows(prompts, answers, max_text_len, think)
        if answers is None:
            ids, attn = left_pad(out[0], self.special.eos)
            return SequenceBatch(ids, attn, attn.clone(), torch.zeros_like(attn))
        ids, prompt = out
        return SequenceBatch(ids, torch.ones_like(prompt), prompt, torch.zeros_like(prompt))

    def lm(self, texts: Sequence[str], *, max_text_len: int = 256) -> SequenceBatch:
        """Plain-text pretraining rows ``<bos> text <eos>`` + EOS fill; nothing is prompt."""
        sp = self.special
        ids = torch.full((len(texts), max_text_len), sp.eos, dtype=torch.long)
        for i, t in enumerate(texts):
            row = [sp.bos, *self.encode(t), sp.eos][:max_text_len]
            ids[i, : len(row)] = torch.tensor(row)
        z = torch.zeros_like(ids, dtype=torch.bool)
        return SequenceBatch(ids, ~z, z.clone(), z.clone())

    def r2i_prompt(self, caption: str) -> list[int]:
        """``<|r2i|>`` + the chat prompt asking for a detailed description of ``caption`` first."""
        return [self.special.r2i, *self.chat_prompt([{"role": "user", "content": R2I_PREFIX + caption}])]

    def r2i(
        self, captions: Sequence[str], traces: Sequence[str], image_codes: torch.Tensor | None = None, *,
        num_image_tokens: int | None = None, max_text_len: int = 128,
    ) -> SequenceBatch:
        """Reasoning-to-image rows; ``image_codes`` None gives all-mask image slots (for sampling)."""
        if len(traces) != len(captions):
            raise MMaDAError(f"r2i got {len(captions)} captions but {len(traces)} traces")
        return self.r2i_from_ids([self.r2i_prompt(c) for c in captions],
                                 [self.encode(f"<think>{t.strip()}</think>") for t in traces], image_codes,
                                 num_image_tokens=num_image_tokens, max_text_len=max_text_len)

    def r2i_from_ids(
        self, prompt_ids: Sequence[Sequence[int]], answer_ids: Sequence[Sequence[int]],
        image_codes: torch.Tensor | None = None, *, num_image_tokens: int | None = None, max_text_len: int = 128,
    ) -> SequenceBatch:
        """r2i rows from ids: ``prompt_ids`` start with ``<|r2i|>``; the text part (prompt without the task
        token, answer, EOS fill) is ``max_text_len`` long, then ``<|soi|> img <|eoi|>``."""
        sp = self.special
        B = len(prompt_ids)
        if any(not p or p[0] != sp.r2i for p in prompt_ids):
            raise MMaDAError("r2i prompts must start with the <|r2i|> task token (SequenceBuilder.r2i_prompt)")
        img = self._image_slots(image_codes, num_image_tokens, B, "r2i", "prompts")  # (B, N)
        text, prompt = self._rows_from_ids([p[1:] for p in prompt_ids], answer_ids, max_text_len)  # (B, T)
        N = img.shape[1]
        col = lambda v: torch.full((B, 1), v, dtype=torch.long)  # noqa: E731
        ids = torch.cat([col(sp.r2i), text, col(sp.soi), img, col(sp.eoi)], 1)
        ones = torch.ones((B, 1), dtype=torch.bool)
        prompt_mask = torch.cat([ones, prompt, ones, torch.zeros((B, N), dtype=torch.bool), ones], 1)
        image_mask = torch.zeros_like(prompt_mask)
        image_mask[:, max_text_len + 2 : max_text_len + 2 + N] = True
        return SequenceBatch(ids, torch.ones_like(prompt_mask), prompt_mask, image_mask)

    # ------------------------------------------------------------------ helpers
    def _prompt_answer_rows(self, prompts, answers, max_len: int, think: bool):
        sp = self.special
        prompt_ids = [self.chat_prompt(p, think=think) for p in prompts]
        if answers is None:
            return (prompt_ids,)
        if len(answers) != len(prompts):
            raise MMaDAError(f"got {len(prompts)} prompts but {len(answers)} answers")
        ids = torch.full((len(prompts), max_len), sp.eos, dtype=torch.long)
        prompt = torch.zeros((len(prompts), max_len), dtype=torch.bool)
        for i, (p, a) in enumerate(zip(prompt_ids, answers)):
            if len(p) >= max_len:
                raise MMaDAError(
                    f"row {i}: prompt has {len(p)} tokens, which leaves no room for the answer within "
                    f"max_text_len={max_len}"
                )
            row = (p + self.encode(a) + [sp.eos])[:max_len]
            ids[i, : len(row)] = torch.tensor(row)
            prompt[i, : len(p)] = True
        return ids, prompt

    # ------------------------------------------------------------------ id-level builders
    # The training data module tokenizes pre-rendered text (curated shards carry chat-rendered
    # ``prompt``/``response`` strings) once per sample, then batches rows from ids with these.
    # Each gives exactly what the string-level layout above gives for the same content.
    def encode_rendered(self, text: str) -> list[int]:
        """Ids of chat-rendered text; special-token strings in it (``<|eot_id|>`` …) map to their ids."""
        return self.encode(text)

    def chat_from_ids(
        self, prompt_ids: Sequence[Sequence[int]], answer_ids: Sequence[Sequence[int]], *, max_text_len: int = 256
    ) -> SequenceBatch:
        """Chat/SFT rows ``prompt answer <eos> <eos>…`` from ids (= :meth:`chat` for the same tokens)."""
        ids, prompt = self._rows_from_ids(prompt_ids, answer_ids, max_text_len)
        return SequenceBatch(ids, torch.ones_like(prompt), prompt, torch.zeros_like(prompt))

    def mmu_from_ids(
        self, image_codes: torch.Tensor, prompt_ids: Sequence[Sequence[int]], answer_ids: Sequence[Sequence[int]],
        *, max_text_len: int = 128,
    ) -> SequenceBatch:
        """Understanding rows from ids: ``<|mmu|> <|soi|> img <|eoi|> prompt answer <eos>…`` (= :meth:`mmu`)."""
        sp = self.special
        img = self.image_ids(image_codes)  # (B, N)
        B = img.shape[0]
        if len(prompt_ids) != B:
            raise MMaDAError(f"mmu got {B} images but {len(prompt_ids)} prompts")
        prefix = torch.cat([torch.tensor([[sp.mmu, sp.soi]]).expand(B, 2), img, torch.full((B, 1), sp.eoi)], 1)
        return _mmu_rows(prefix, *self._rows_from_ids(prompt_ids, answer_ids, max_text_len))

    def t2i_from_ids(
        self, caption_ids: Sequence[Sequence[int]], image_codes: torch.Tensor, *, max_text_len: int = 128
    ) -> SequenceBatch:
        """Text-to-image rows from caption ids (no bos/eos; ``[]`` = the dropped, unconditional caption)."""
        sp = self.special
        B, N = image_codes.shape
        if len(caption_ids) != B:
            raise MMaDAError(f"t2i got {len(caption_ids)} captions but {B} images")
        L = max_text_len + 1 + 1 + N + 1
        ids = torch.empty((B, L), dtype=torch.long)
        attn = torch.ones((B, L), dtype=torch.bool)
        for i, cap in enumerate(caption_ids):
            text = [sp.bos, *cap, sp.eos]
            if len(text) > max_text_len:
                text = [*text[: max_text_len - 1], sp.eos]
            k = max_text_len - len(text)
            ids[i, : k + 1 + len(text) + 1] = torch.tensor([sp.ipad] * k + [sp.t2i] + text + [sp.soi])
            attn[i, :k] = False
        ids[:, max_text_len + 2 : max_text_len + 2 + N] = self.image_ids(image_codes)
        ids[:, -1] = sp.eoi
        image_mask = torch.zeros((B, L), dtype=torch.bool)
        image_mask[:, max_text_len + 2 : max_text_len + 2 + N] = True
        return SequenceBatch(ids, attn, ~image_mask, image_mask)

    def lm_from_ids(self, text_ids: Sequence[Sequence[int]], *, max_text_len: int = 256) -> SequenceBatch:
        """Plain-text rows: ``<bos>`` (added unless the ids start with it) + text + ``<eos>`` + EOS fill."""
        sp = self.special
        ids = torch.full((len(text_ids), max_text_len), sp.eos, dtype=torch.long)
        for i, t in enumerate(text_ids):
            t = list(t)
            row = ([] if t[:1] == [sp.bos] else [sp.bos]) + t + [sp.eos]
            ids[i, : min(len(row), max_text_len)] = torch.tensor(row[:max_text_len])
        z = torch.zeros_like(ids, dtype=torch.bool)
        return SequenceBatch(ids, ~z, z.clone(), z.clone())

    def _rows_from_ids(self, prompt_ids, answer_ids, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        sp = self.special
        if len(answer_ids) != len(prompt_ids):
            raise MMaDAError(f"got {len(prompt_ids)} prompts but {len(answer_ids)} answers")
        ids = torch.full((len(prompt_ids), max_len), sp.eos, dtype=torch.long)
        prompt = torch.zeros((len(prompt_ids), max_len), dtype=torch.bool)
        for i, (p, a) in enumerate(zip(prompt_ids, answer_ids)):
            if len(p) >= max_len:
                raise MMaDAError(
                    f"row {i}: prompt has {len(p)} tokens, which leaves no room for the answer within "
                    f"max_text_len={max_len}"
                )
            row = ([*p, *a, sp.eos])[:max_len]
            ids[i, : len(row)] = torch.tensor(row)
            prompt[i, : len(p)] = True
        return ids, prompt


def _mmu_rows(prefix: torch.Tensor, ids: torch.Tensor, prompt: torch.Tensor) -> SequenceBatch:
    """Training rows ``prefix ids``: prefix (B, N + 3) = ``<|mmu|> <|soi|> img <|eoi|>``, all of it prompt."""
    B, N = prefix.shape[0], prefix.shape[1] - 3
    image_mask = torch.zeros((B, N + 3 + ids.shape[1]), dtype=torch.bool)
    image_mask[:, 2 : 2 + N] = True
    return SequenceBatch(
        torch.cat([prefix, ids], 1),
        torch.ones_like(image_mask),
        torch.cat([torch.ones((B, N + 3), dtype=torch.bool), prompt], 1),
        image_mask,
    )
