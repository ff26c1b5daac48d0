"""Training objectives of the unified model (MMaDA's ``MMadaModelLM.forward_process``, LLaDA's losses).

Sources: Gen-Verse/MMaDA models/modeling_mmada.py, ML-GSAI/LLaDA GUIDELINES.md; summary in docs/model.md.

    lm    Σ_masked CE/p / (B·L)                       text pretraining, nothing is prompt
    sft   mean_rows[ Σ_masked CE/p / answer_len ]     chat/CoT, mmu and r2i rows, prompt kept clean
    t2i   mean_masked CE                              images: no 1/t weighting

r2i rows (reasoning, then the image) are noised and weighted like chat rows over everything after
the prompt, the ``<think>`` trace, its EOS fill and the image tokens alike, as the official
``MMadaModelLM.forward_process_with_r2i`` does (``loss_r2i``: CE/p over masked tokens / answer length).

``unified_loss`` noises a mixed batch (t2i / lm / mmu / chat rows), runs ONE forward pass over
the concatenation and returns the coefficient-weighted total plus per-task losses and
masked-token accuracies. Cross-entropies are computed in fp32 whatever the model dtype.

Note on parity: the official code also counts the visible ``<|soi|>``/``<|eoi|>`` as (trivial) t2i
targets; here only masked image tokens are targets, so the t2i loss is the plain mean over them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmada.diffusion.masking import mask_image, mask_text
from mmada.errors import ConfigError
from mmada.tokenization.layouts import SequenceBatch

TASKS = ("t2i", "lm", "mmu", "chat", "r2i")


def _token_ce(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """CE (fp32) at masked positions only, as a flat vector (n_masked,)."""
    return F.cross_entropy(logits[masked].float(), targets[masked], reduction="none")


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """LLaDA pretraining loss: Σ_masked CE/p / (B·L)."""
    B, L = targets.shape
    return (_token_ce(logits, targets, masked) / p[masked]).sum() / (B * L)


def sft_loss(
    logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor, p: torch.Tensor, prompt_mask: torch.Tensor
) -> torch.Tensor:
    """LLaDA SFT loss: per row Σ_masked CE/p divided by that row's answer length (incl. EOS fill), mean over rows."""
    B, L = targets.shape
    ce = torch.zeros((B, L), dtype=torch.float32, device=logits.device)
    ce[masked] = _token_ce(logits, targets, masked) / p[masked].float()
    answer_len = (~prompt_mask).sum(dim=1).clamp(min=1)  # (B,)
    return (ce.sum(dim=1) / answer_len).mean()


def t2i_loss(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """MaskGIT loss: plain mean CE over masked image tokens (0, still attached to the graph, when none is)."""
    return _token_ce(logits, targets, masked).sum() / masked.sum().clamp(min=1)


def masked_accuracy(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Argmax accuracy over masked positions; NaN when none is masked (no host sync to ask)."""
    hits = (logits.argmax(-1) == targets) & masked
    return hits.sum().float() / masked.sum().float()


@dataclass
class LossOutput:
    loss: torch.Tensor  # weighted total (scalar, differentiable)
    per_task: dict[str, torch.Tensor]  # detached per-task losses
    accuracy: dict[str, torch.Tensor]  # masked-token accuracy per task
    num_masked: dict[str, torch.Tensor]  # () long, on the logits' device


def _pad_to(batch: SequenceBatch, length: int, pad_id: int) -> SequenceBatch:
    extra = length - batch.input_ids.shape[1]
    if extra == 0:
        return batch
    B = batch.input_ids.shape[0]
    z = torch.zeros((B, extra), dtype=torch.bool, device=batch.input_ids.device)
    return SequenceBatch(
        torch.cat([batch.input_ids, torch.full((B, extra), pad_id, dtype=torch.long, device=z.device)], 1),
        torch.cat([batch.attention_mask, z], 1),  # right padding is never attended
        torch.cat([batch.prompt_mask, ~z], 1),  # … and never a target
        torch.cat([batch.image_mask, z], 1),
    )


def unified_loss(
    model,
    batches: Mapping[str, SequenceBatch],
    *,
    mask_id: int,
    coeffs: Mapping[str, float] | None = None,
    image_schedule: str = "cosine",
    min_masking_rate: float = 0.0,
    eps: float = 1e-3,
    pad_id: int | None = None,
    generator: torch.Generator | None = None,
    per_task_forward: bool = False,
) -> LossOutput:
    """Noise each task's clean rows, run one forward pass, and combine the per-task losses.

    Args:
        model: returns ``.logits`` (B, L, V) for ``model(input_ids, attention_mask=…)``.
        batches: clean rows per task: ``t2i`` (image slots in ``image_mask``), ``lm`` (no prompt),
            ``mmu``, ``chat`` and ``r2i`` (prompt rows, SFT normalisation).
        coeffs: loss coefficient per task (default 1.0), e.g. ``{"t2i": 1, "lm": 0.1, "mmu": 1}``.
        per_task_forward: one forward per task instead of one for all rows padded to the longest
            task's length (the same losses: rows never attend to each other or to right padding). On CPU
            the padding is the cost (t2i rows of ~83 tokens padded to ~200 for VQA rows); a GPU or a
            sharded model may prefer the single larger forward.
    """
    coeffs = dict(coeffs or {})
    unknown = [k for k in list(batches) + list(coeffs) if k not in TASKS]
    if unknown:
        raise ConfigError(f"unknown task(s) {unknown} in unified_loss; expected {TASKS}")
    tasks = [k for k in TASKS if k in batches and batches[k].input_ids.shape[0] > 0]
    if not tasks:
        raise ConfigError("unified_loss got no rows")
    noisy, masks, probs = {}, {}, {}
    for k in tasks:
        b = batches[k]
        if k == "t2i":
            img = b.input_ids[b.image_mask].view(b.input_ids.shape[0], -1)  # (B, N)
            noisy_img, m_img = mask_image(
                img, mask_id=mask_id, schedule=image_schedule, min_masking_rate=min_masking_rate, generator=generator
            )
            x = b.input_ids.clone()
            x[b.image_mask] = noisy_img.reshape(-1)
            m = torch.zeros_like(b.image_mask)
            m[b.image_mask] = m_img.reshape(-1)
            noisy[k], masks[k], probs[k] = x, m, None
        else:
            prompt = b.prompt_mask if k in ("mmu", "chat", "r2i") else None
            noisy[k], masks[k], probs[k] = mask_text(
                b.input_ids, mask_id=mask_id, prompt_mask=prompt, eps=eps, generator=generator
            )
    if per_task_forward:  # (B_k, L_k, V) per task
        logits_of = {k: model(noisy[k], attention_mask=batches[k].attention_mask).logits for k in tasks}
    else:
        L = max(batches[k].input_ids.shape[1] for k in tasks)
        pad = pad_id if pad_id is not None else mask_id
        padded = {k: _pad_to(SequenceBatch(noisy[k], batches[k].attention_mask, batches[k].prompt_mask,
                                           batches[k].image_mask), L, pad) for k in tasks}
        x = torch.cat([padded[k].input_ids for k in tasks])
        attn = torch.cat([padded[k].attention_mask for k in tasks])
        logits = model(x, attention_mask=attn).logits  # (ΣB, L, V): one forward for all tasks
        logits_of, row = {}, 0
        for k in tasks:
            B, Lk = batches[k].input_ids.shape
            logits_of[k] = logits[row : row + B, :Lk]
            row += B
    total = torch.zeros((), dtype=torch.float32, device=batches[tasks[0]].input_ids.device)
    per_task, acc, counts = {}, {}, {}
    for k in tasks:
        b = batches[k]
        lg = logits_of[k]
        m = masks[k]
        if k == "t2i":
            loss = t2i_loss(lg, b.input_ids, m)
        elif k == "lm":
            loss = lm_loss(lg, b.input_ids, m, probs[k])
        else:
            loss = sft_loss(lg, b.input_ids, m, probs[k], b.prompt_mask)
        total = total + coeffs.get(k, 1.0) * loss
        per_task[k] = loss.detach()
        acc[k] = masked_accuracy(lg.detach(), b.input_ids, m)
        counts[k] = m.sum()
    return LossOutput(total, per_task, acc, counts)
