"""How many masked tokens a sampler step commits: the fixed schedule and confidence-aware rules.

Plain LLaDA decoding commits a fixed number of tokens per step (``num_transfer_tokens``: the
block's masks split evenly over its steps). Fast-dLLM's parallel decoding (arXiv 2505.22618;
NVlabs/Fast-dLLM llada/generate.py: get_transfer_index) lets the model's confidence decide instead.
With ``c_1 ≥ c_2 ≥ …`` the confidences (max-softmax probability of the chosen token) of a row's
masked positions in the current block, sorted:

* **threshold** ``τ``: commit every masked token with ``c > τ``.
* **factor** ``f``: commit the ``n`` most confident tokens for the largest ``n`` with
  ``(n + 1)·(1 − c_n) < f``, i.e. ``c_n > 1 − f/(n + 1)`` (Fast-dLLM's
  ``get_transfer_index_dynamic``; its theorem bounds the error of decoding ``n`` tokens in
  parallel by ``(n + 1)·ε``). The bar rises with ``n``, so a few very confident tokens go
  together while borderline ones wait. Larger ``f`` = more parallelism.

Both rules commit at least one token per step (the most confident) and at least as many as the
fixed schedule would, so a block never takes more than its ``steps / num_blocks`` steps; with one
token per step (``steps == gen_length``, Fast-dLLM's setting) that floor is exactly Fast-dLLM's
"at least one". A threshold ≥ 1 never fires, which makes the sampler the plain one.
"""

from __future__ import annotations

import torch


def num_transfer_tokens(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to unmask at each of ``steps`` steps, per row: (B, steps), summing to the mask count."""
    n = mask_index.sum(dim=1, keepdim=True)  # (B, 1)
    base, rem = n // steps, n % steps
    out = base.expand(-1, steps).clone()
    out += (torch.arange(steps, device=mask_index.device)[None] < rem).long()
    return out


def confident_counts(
    conf: torch.Tensor, minimum: torch.Tensor, *, threshold: float | None = None, factor: float | None = None
) -> torch.Tensor:
    """Tokens to commit this step, per row (B,), by the threshold or factor rule (module docstring).

    ``conf`` (B, K): confidences of the block's positions, ``-inf`` where already decoded.
    ``minimum`` (B,): the fixed schedule's count for this step (the floor).
    """
    if (threshold is None) == (factor is None):
        raise ValueError("exactly one of threshold and factor must be given")
    n_masked = torch.isfinite(conf).sum(-1)  # (B,)
    vals = conf.sort(dim=-1, descending=True).values  # (B, K), masked positions first
    if threshold is not None:
        n = (vals > threshold).sum(-1)
    else:
        rank = torch.arange(1, conf.shape[-1] + 1, device=conf.device, dtype=vals.dtype)  # n = 1..K
        ok = vals > 1 - factor / (rank + 1)  # (B, K)
        n = ok.long().cumprod(-1).sum(-1)  # length of the accepted prefix
    n = torch.maximum(n, minimum.to(n.dtype))
    n = torch.maximum(n, (n_masked > 0).long())  # at least one while masks remain
    return torch.minimum(n, n_masked)
