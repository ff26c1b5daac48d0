"""Monte-Carlo ELBO estimate of ``log p(answer | prompt)`` for a masked-diffusion model (LLaDA's).

A masked-diffusion LM has no left-to-right factorisation, so likelihood-based benchmarks
(multiple choice, perplexity-style tasks) use LLaDA's ``get_log_likelihood`` bound
(ML-GSAI/LLaDA get_log_likelihood.py):

    seq = [prompt; answer]   (T = answer length; the prompt is never masked)
    per round of b rows: k ~ U{1..T};  n_j = ((round(k + j·T/b) − 1) mod T) + 1   (stratified counts)
    row j masks exactly n_j answer tokens (uniformly random positions);  p_j = n_j / T
    loss_j = Σ_{masked i} −log p_θ(answer_i | noisy row) / p_j
    log-likelihood ≈ −mean over rows of loss_j      (mc_num rows in all, mc_num / b rounds)

It is a lower bound on the log-likelihood in expectation; the estimator's variance falls as
``1 / mc_num`` (LLaDA uses 128 samples for general benchmarks, 1 for single-token answers).

Batching: rows of *different* requests are packed into one forward pass (right-padded, padding
masked out of attention), and every request draws its noise from its own generator seeded by a
hash of ``(seed, prompt, answer)`` — so a request's estimate does not depend on what it was
batched with, and repeating a run reproduces it exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from mmada.diffusion.sampling import generate_text
from mmada.diffusion.settings import SamplerSettings
from mmada.errors import MMaDAError


def _request_generator(seed: int, prompt: Sequence[int], answer: Sequence[int]) -> torch.Generator:
    h = hashlib.sha256(f"{seed}|{list(prompt)}|{list(answer)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))


def stratified_mask_counts(k: int, T: int, b: int) -> torch.Tensor:
    """LLaDA's per-round mask counts (b,): ``linspace(k, k + (b−1)·T/b, b)`` rounded, wrapped into 1..T."""
    n = torch.linspace(float(k), k + (b - 1) * (T / b), b).round().long()
    return ((n - 1) % T) + 1


def _noise_rows(
    prompt: Sequence[int], answer: Sequence[int], mc_num: int, b: int, mask_id: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All ``mc_num`` noisy rows of one request: ids (mc_num, L), masked (mc_num, L), p (mc_num,)."""
    P, T = len(prompt), len(answer)
    seq = torch.tensor([*prompt, *answer], dtype=torch.long)
    rows, masks, ps = [], [], []
    for _ in range(mc_num // b):
        k = int(torch.randint(1, T + 1, (1,), generator=g))
        for n in stratified_mask_counts(k, T, b).tolist():
            m = torch.zeros(P + T, dtype=torch.bool)
            m[P + torch.randperm(T, generator=g)[:n]] = True
            rows.append(torch.where(m, torch.tensor(mask_id), seq))
            masks.append(m)
            ps.append(n / T)
    return torch.stack(rows), torch.stack(masks), torch.tensor(ps, dtype=torch.float64)


def _forward_logits(model, ids: torch.Tensor, attn: torch.Tensor | None, prompt_pos: torch.Tensor,
                    cfg_scale: float, mask_id: int) -> torch.Tensor:
    if cfg_scale > 0:  # unconditional copy: prompt fully masked; un + (w + 1)(cond − un)
        un = torch.where(prompt_pos, torch.tensor(mask_id, device=ids.device), ids)
        both = model(torch.cat([ids, un]), attention_mask=None if attn is None else attn.repeat(2, 1)).logits
        cond, unc = both.chunk(2)
        return unc + (cfg_scale + 1) * (cond - unc)
    return model(ids, attention_mask=attn).logits


@torch.no_grad()
def elbo_loglikelihood(
    model,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    *,
    mc_num: int = 128,
    mc_batch_size: int = 16,
    batch_size: int = 32,
    cfg_scale: float = 0.0,
    mask_id: int | None = None,
    pad_id: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """ELBO estimates (N,) float64 of ``log p(answers[i] | prompts[i])`` (token-id lists).

    Args:
        mc_num: Monte-Carlo rows per request (a multiple of ``mc_batch_size``).
        mc_batch_size: rows per stratified round (LLaDA's ``batch_size``).
        batch_size: rows per forward pass; rows of several requests share a pass.
        cfg_scale: classifier-free guidance on the likelihood (LLaDA's ``cfg``), 0 = off.
        mask_id / pad_id: default to ``model.config.mask_token_id`` / ``pad_token_id``.
        seed: the per-request noise is a function of (seed, prompt, answer) only.
    """
    if len(prompts) != len(answers):
        raise MMaDAError(f"{len(prompts)} prompts for {len(answers)} answers; lengths must match")
    if mc_num <= 0 or mc_batch_size <= 0 or mc_num % mc_batch_size:
        raise MMaDAError(f"mc_num={mc_num} must be a positive multiple of mc_batch_size={mc_batch_size}")
    for i, a in enumerate(answers):
        if len(a) == 0:
            raise MMaDAError(f"request {i}: empty answer/continuation; the ELBO needs at least one token")
    mask_id = int(model.config.mask_token_id if mask_id is None else mask_id)
    pad_id = int(getattr(model.config, "pad_token_id", None) or 0) if pad_id is None else int(pad_id)
    dev = next(model.parameters()).device
    # 1. every request's noisy rows, tagged with the request index
    flat: list[tuple[int, torch.Tensor, torch.Tensor, float, int]] = []  # (req, ids, masked, p, prompt_len)
    for r, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        ids, masked, ps = _noise_rows(p, a, mc_num, mc_batch_size, mask_id, _request_generator(seed, p, a))
        flat.extend((r, ids[j], masked[j], float(ps[j]), len(p)) for j in range(len(ps)))
    # 2. forward passes over packed rows (longest first keeps padding small)
    order = sorted(range(len(flat)), key=lambda i: -len(flat[i][1]))
    total = torch.zeros(len(prompts), dtype=torch.float64)
    for s in range(0, len(order), batch_size):
        chunk = [flat[i] for i in order[s : s + batch_size]]
        L = max(len(c[1]) for c in chunk)
        ids = torch.full((len(chunk), L), pad_id, dtype=torch.long)
        masked = torch.zeros((len(chunk), L), dtype=torch.bool)
        attn = torch.zeros((len(chunk), L), dtype=torch.bool)
        prompt_pos = torch.zeros((len(chunk), L), dtype=torch.bool)
        targets = torch.full((len(chunk), L), pad_id, dtype=torch.long)
        for j, (r, row, m, _, plen) in enumerate(chunk):
            n = len(row)
            ids[j, :n], masked[j, :n], attn[j, :n] = row, m, True
            prompt_pos[j, :plen] = True
            targets[j, :n] = torch.tensor([*prompts[r], *answers[r]], dtype=torch.long)
        ids, masked, attn, prompt_pos, targets = (t.to(dev) for t in (ids, masked, attn, prompt_pos, targets))
        logits = _forward_logits(
            model, ids, None if bool(attn.all()) else attn, prompt_pos, cfg_scale, mask_id
        )  # (b, L, V)
        ce = F.cross_entropy(logits[masked].float(), targets[masked], reduction="none").double()  # (#masked,)
        row_of = masked.nonzero()[:, 0]  # (#masked,) row index of each masked token
        per_row = torch.zeros(len(chunk), dtype=torch.float64, device=ce.device).index_add_(0, row_of, ce).cpu()
        for j, (r, _, _, p, _) in enumerate(chunk):
            total[r] += per_row[j] / p
    return -total / mc_num


@torch.no_grad()
def greedy_matches(
    model,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    *,
    mask_id: int | None = None,
    pad_id: int | None = None,
    batch_size: int = 16,
) -> list[bool]:
    """Whether greedy diffusion decoding of ``len(answer)`` masks after the prompt reproduces the answer.

    This is LLaDA's ``suffix_greedy_prediction`` (one token per step, most confident first), i.e.
    ``generate_text`` with ``steps = gen_length = block_length = len(answer)`` at temperature 0;
    lm-eval's ``is_greedy``. Requests are batched by answer length.
    """
    mask_id = int(model.config.mask_token_id if mask_id is None else mask_id)
    pad_id = int(getattr(model.config, "pad_token_id", None) or 0) if pad_id is None else int(pad_id)
    dev = next(model.parameters()).device
    out = [False] * len(prompts)
    by_len: dict[int, list[int]] = {}
    for i, a in enumerate(answers):
        by_len.setdefault(len(a), []).append(i)
    for T, idx in by_len.items():
        for s in range(0, len(idx), batch_size):
            group = idx[s : s + batch_size]
            P = max(len(prompts[i]) for i in group)
            ids = torch.full((len(group), P), pad_id, dtype=torch.long)
            attn = torch.zeros((len(group), P), dtype=torch.bool)
            for j, i in enumerate(group):
                n = len(prompts[i])
                if n:
                    ids[j, P - n :] = torch.tensor(list(prompts[i]), dtype=torch.long)
                    attn[j, P - n :] = True
            greedy = SamplerSettings(steps=T, gen_length=T, block_length=T)  # one token per step, temperature 0
            gen = generate_text(model, ids.to(dev), greedy, mask_id=mask_id, attention_mask=attn.to(dev))[:, P:].cpu()
            for j, i in enumerate(group):
                out[i] = gen[j].tolist() == list(answers[i])
    return out
