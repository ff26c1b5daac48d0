"""Independent reference computations for the model and samplers, written from the official
algorithms (Gen-Verse/MMaDA models/modeling_llada.py: LLaDAModel.forward; ML-GSAI/LLaDA generate.py:
generate; Gen-Verse/MMaDA models/modeling_mmada.py: MMadaModelLM.t2i_generate; summary in
docs/model.md), deliberately in a different style from the library (plain functions over a state
dict, explicit loops, explicit softmax/rotations) so that agreement means something.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def rms_norm_ref(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x64 = x.double()
    out = x64 / torch.sqrt((x64 * x64).mean(-1, keepdim=True) + eps)
    return (w.double() * out.to(x.dtype).double()).to(x.dtype)


def rope_ref(x: torch.Tensor, theta: float, positions: list[int] | None = None) -> torch.Tensor:
    """Rotate each pair (i, i + hd/2) of x (B, H, T, hd) by angle pos · θ^(−2i/hd), via explicit 2×2 rotations."""
    _B, _H, T, hd = x.shape
    half = hd // 2
    out = torch.empty_like(x, dtype=torch.float64)
    xd = x.double()
    pos = positions if positions is not None else list(range(T))
    for t in range(T):
        for i in range(half):
            ang = pos[t] * theta ** (-2.0 * i / hd)
            c, s = math.cos(ang), math.sin(ang)
            a, b = xd[..., t, i], xd[..., t, i + half]
            out[..., t, i] = a * c - b * s
            out[..., t, i + half] = b * c + a * s
    return out


def attention_ref(q, k, v, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ/√d + mask) v in float64; key_mask (B, T) True = attend."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.softmax(scores, -1) @ v


def forward_ref(sd: dict[str, torch.Tensor], input_ids: torch.Tensor, *, n_heads: int, theta: float, eps: float,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """LLaDA forward in float64 over a state dict with the official key names."""
    n_layers = len({k.split(".")[3] for k in sd if k.startswith("model.transformer.blocks.")})
    x = sd["model.transformer.wte.weight"].double()[input_ids]
    B, T, d = x.shape
    hd = d // n_heads

    def lin(name, h):
        return h @ sd[name].double().T

    for i in range(n_layers):
        p = f"model.transformer.blocks.{i}."
        h = rms_norm_ref(x, sd[p + "attn_norm.weight"], eps)
        q = lin(p + "q_proj.weight", h).view(B, T, n_heads, hd).transpose(1, 2)
        k = lin(p + "k_proj.weight", h).view(B, T, -1, hd).transpose(1, 2)
        v = lin(p + "v_proj.weight", h).view(B, T, -1, hd).transpose(1, 2)
        q, k = rope_ref(q, theta), rope_ref(k, theta)
        a = attention_ref(q, k, v, key_mask).transpose(1, 2).reshape(B, T, d)
        x = x + lin(p + "attn_out.weight", a)
        h = rms_norm_ref(x, sd[p + "ff_norm.weight"], eps)
        gate = lin(p + "ff_proj.weight", h)
        x = x + lin(p + "ff_out.weight", gate * torch.sigmoid(gate) * lin(p + "up_proj.weight", h))
    x = rms_norm_ref(x, sd["model.transformer.ln_f.weight"], eps)
    return lin("model.transformer.ff_out.weight", x)


def llada_generate_ref(model, prompt, *, steps, gen_length, block_length, mask_id, cfg_scale=0.0,
                       attention_mask=None, logits_eos_inf=False, confidence_eos_eot_inf=False, eos_id=None,
                       eot_id=None):
    """LLaDA's generate() at temperature 0: full-sequence logits and confidences, per-row top-k.

    The EOS options as written there: ``logits[:, :, eos] = -inf`` before the argmax, and
    ``logits_with_noise[:, :, eos] = logits[:, :, eot] = -inf`` after it; at temperature 0
    ``logits_with_noise`` *is* ``logits``, so both entries are −inf in the confidence softmax.
    """
    B, P = prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    am = None
    if attention_mask is not None:
        am = torch.cat([attention_mask, torch.ones(B, gen_length, dtype=attention_mask.dtype)], 1)
    prompt_index = x != mask_id
    nb = gen_length // block_length
    s = steps // nb
    for b in range(nb):
        blk = x[:, P + b * block_length : P + (b + 1) * block_length] == mask_id
        n = blk.sum(1)
        k = [[int(n[j]) // s + (1 if st < int(n[j]) % s else 0) for st in range(s)] for j in range(B)]
        for st in range(s):
            mask_index = x == mask_id
            if cfg_scale > 0:
                un = x.clone()
                un[prompt_index] = mask_id
                lg = model(torch.cat([x, un]), attention_mask=None if am is None else torch.cat([am, am])).logits
                c, u = torch.chunk(lg, 2)
                logits = u + (cfg_scale + 1) * (c - u)
            else:
                logits = model(x, attention_mask=am).logits
            logits = logits.clone()
            if logits_eos_inf:
                logits[:, :, eos_id] = -torch.inf
            logits_with_noise = logits  # add_gumbel_noise(logits, 0) returns its input
            x0 = logits_with_noise.argmax(-1)
            if confidence_eos_eot_inf:
                logits_with_noise[:, :, eos_id] = logits[:, :, eot_id] = -torch.inf
            p = torch.softmax(logits.double(), -1)
            x0_p = torch.gather(p, -1, x0[..., None]).squeeze(-1)
            x0_p[:, P + (b + 1) * block_length :] = -np.inf
            x0 = torch.where(mask_index, x0, x)
            conf = torch.where(mask_index, x0_p, torch.tensor(-np.inf, dtype=torch.float64))
            for j in range(B):
                if k[j][st]:
                    idx = torch.topk(conf[j], k=k[j][st]).indices
                    x[j, idx] = x0[j, idx]
    return x


@torch.no_grad()
def maskgit_ref(model, input_ids, uncond_ids, *, N, C, offset, mask_id, steps, w, temperature, generator,
                attention_mask=None, uncond_attention_mask=None):
    """Show-o/MMaDA t2i_generate loop (text-length bug #64 fixed), compounding temperature decay."""
    x = input_ids.clone()
    text_len = x.shape[1] - N - 1
    cur = torch.where(x[:, -(N + 1) : -1] == mask_id, mask_id, x[:, -(N + 1) : -1] - offset)
    sampled = cur
    for step in range(steps):
        if w > 0:
            un = torch.cat([uncond_ids[:, :text_len], x[:, text_len:]], 1)
            am = torch.cat([attention_mask, uncond_attention_mask]) if attention_mask is not None else None
            lg = model(torch.cat([x, un]), attention_mask=am).logits
            c, u = torch.chunk(lg, 2)
            logits = (1 + w) * c - w * u
        else:
            logits = model(x, attention_mask=attention_mask).logits
        logits = logits[:, -(N + 1) : -1, offset : offset + C].float()
        probs = logits.softmax(-1)
        sampled = torch.multinomial(probs.reshape(-1, C), 1, generator=generator)[:, 0].view(*logits.shape[:-1])
        unknown = cur == mask_id
        sampled = torch.where(unknown, sampled, cur)
        ratio = (step + 1) / steps
        mask_ratio = math.cos(math.pi / 2 * ratio)
        sel = torch.gather(probs, -1, sampled.long()[..., None]).squeeze(-1)
        sel = torch.where(unknown, sel, torch.finfo(sel.dtype).max)
        mask_len = torch.tensor([[math.floor(N * mask_ratio)]]).expand(x.shape[0], 1)
        mask_len = torch.max(torch.tensor([1]), torch.min(unknown.sum(-1, keepdim=True) - 1, mask_len))
        temperature = temperature * (1.0 - ratio)
        noise = torch.zeros_like(sel).uniform_(0, 1, generator=generator)
        gum = -torch.log((-torch.log(noise.clamp(min=1e-20))).clamp(min=1e-20))
        confidence = torch.log(sel.clamp(min=1e-20)) + temperature * gum
        cut = torch.gather(torch.sort(confidence, -1).values, 1, mask_len.long())
        masking = confidence < cut
        x[:, -(N + 1) : -1] = torch.where(masking, mask_id, sampled + offset)
        cur = torch.where(masking, mask_id, sampled)
    return sampled
