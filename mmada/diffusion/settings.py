"""Typed sampler settings: the one object that configs hold, samplers run with and reports record.

Every path that samples — ``mmada generate`` / ``mmada t2i``, UniGRPO rollouts (``grpo.sampler``,
``grpo.image_sampler``), periodic training samples (``samples.sampler``), evaluation
(``evaluate.sampler`` in params.yaml, ``mmada eval`` flags) — builds one of these and hands it to
the sampler unchanged, so every option (cache, threshold, factor, stop_at_eos, prompt cache …)
reaches every path, and a report records the settings whole::

    s = SamplerSettings(gen_length=256, block_length=32, steps=256, cache="prefix", threshold=0.9)
    ids = generate_text(model, prompt_ids, s, generator=s.generator())
    answers = generate_answers(lm, prompts, s)
    mlflow.log_params(s.record())          # {"sampler.cache": "prefix", "sampler.threshold": 0.9, …}

The rules between fields are checked here, once; ``SamplerSettings.make(**kw)`` turns validation
failures into a :class:`~mmada.errors.SamplerError` naming the field (CLI: ``error: …``, status 2).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import ConfigDict, Field, field_validator, model_validator

from mmada.config import MAX_COUNT, Strict, validate
from mmada.diffusion.cache import CacheMode, ImageCacheMode, PromptCache
from mmada.diffusion.masking import get_schedule
from mmada.errors import MMaDAError, SamplerError


class _Settings(Strict):
    # attribute docstrings become field descriptions: the CLI's --help and the Prefect forms show them
    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    @classmethod
    def make(cls, **kwargs):
        """Validate ``kwargs`` into settings; errors become :class:`SamplerError` naming the field."""
        return validate(cls, kwargs, f"invalid {cls.__name__}", error=SamplerError)

    def generator(self, device: str | torch.device = "cpu") -> torch.Generator:
        """A torch generator seeded with ``seed``."""
        return torch.Generator(device=device).manual_seed(self.seed)

    def record(self, prefix: str = "sampler.") -> dict[str, str | int | float | bool | None]:
        """Flat ``{prefix + field: value}`` for MLflow params / report headers."""
        return {f"{prefix}{k}": v for k, v in self.model_dump().items()}


class SamplerSettings(_Settings):
    """Text / MMU block-diffusion decoding (``generate_text``). Defaults = the plain sampler."""

    steps: int = Field(64, gt=0, le=MAX_COUNT)
    """Denoising steps over the whole answer (``steps / (gen_length / block_length)`` per block)."""
    gen_length: int = Field(64, gt=0, le=MAX_COUNT)
    """Generated tokens per answer."""
    block_length: int = Field(32, gt=0, le=MAX_COUNT)
    """Semi-autoregressive block size (Fast-dLLM: 32)."""
    temperature: float = Field(0.0, ge=0)
    """Gumbel-max sampling temperature; 0 = greedy."""
    cfg_scale: float = Field(0.0, ge=0)
    """Classifier-free guidance (prompt masked for the unconditional pass)."""
    remasking: Literal["low_confidence", "random"] = "low_confidence"
    """Which masked tokens a step commits: the most confident ones, or random ones."""
    cache: CacheMode = "none"
    """Fast-dLLM block-wise KV cache."""
    prompt_cache: PromptCache = "per_block"
    """``once``: the prompt's K/V (e.g. the MMU image prefix) are never refreshed."""
    threshold: float | None = Field(None, gt=0)
    """Confidence-threshold parallel decoding (Fast-dLLM: 0.9); None = fixed tokens per step."""
    factor: float | None = Field(None, gt=0)
    """Factor-based parallel decoding (``(n+1)(1−c_n) < factor``); exclusive with ``threshold``."""
    stop_at_eos: bool = False
    """Finish a row once a block ends with EOS (rest filled with EOS); stop when all rows are done."""
    logits_eos_inf: bool = False
    """LLaDA generate.py: EOS is never sampled (its logit is −inf), so answers use all of gen_length."""
    confidence_eos_eot_inf: bool = False
    """LLaDA generate.py: predicted EOS/EoT get confidence 0, so they are committed last (at temperature
    > 0 the official code drops only EoT's; reproduced)."""
    seed: int = 0
    """Seed of :meth:`generator` (the CLI, evaluation); rollouts draw from the run's own generator."""

    @model_validator(mode="after")
    def _consistent(self) -> SamplerSettings:
        if self.gen_length % self.block_length:
            raise ValueError(f"gen_length={self.gen_length} is not divisible by block_length={self.block_length}")
        blocks = self.gen_length // self.block_length
        if self.steps % blocks:
            raise ValueError(f"steps={self.steps} is not divisible by the number of blocks {blocks}")
        if self.threshold is not None and self.factor is not None:
            raise ValueError("threshold and factor are exclusive parallel-decoding rules; set one")
        if (self.threshold is not None or self.factor is not None) and self.remasking != "low_confidence":
            raise ValueError("threshold/factor decoding needs remasking='low_confidence'")
        if self.prompt_cache == "once" and self.cache == "none":
            raise ValueError("prompt_cache='once' needs cache='prefix' or 'dual'")
        return self

    def describe(self) -> str:
        """A short label, e.g. ``gen256/blk32/steps256 cache=prefix threshold=0.9``."""
        parts = [f"gen{self.gen_length}/blk{self.block_length}/steps{self.steps}"]
        if self.cache != "none":
            parts.append(f"cache={self.cache}" + ("(prompt once)" if self.prompt_cache == "once" else ""))
        if self.threshold is not None:
            parts.append(f"threshold={self.threshold:g}")
        if self.factor is not None:
            parts.append(f"factor={self.factor:g}")
        if self.stop_at_eos:
            parts.append("stop_at_eos")
        if self.logits_eos_inf:
            parts.append("logits_eos_inf")
        if self.confidence_eos_eot_inf:
            parts.append("confidence_eos_eot_inf")
        if self.temperature:
            parts.append(f"T={self.temperature:g}")
        return " ".join(parts)


class ImageSamplerSettings(_Settings):
    """Text-to-image MaskGIT decoding (``generate_image``). Defaults = the plain MaskGIT loop."""

    steps: int = Field(12, gt=0, le=MAX_COUNT)
    """MaskGIT steps (every image slot is predicted at every step)."""
    guidance_scale: float = Field(0.0, ge=0)
    """MUSE-style CFG ``(1 + w)·cond − w·uncond``; cond and uncond run as one batch."""
    temperature: float = Field(1.0, ge=0)
    """Scale of the Gumbel noise on the confidences that decide which slots are re-masked."""
    schedule: str = "cosine"
    """Mask schedule γ(t): cosine | linear | sigmoid | pow<k>."""
    temperature_decay: Literal["cumulative", "linear"] = "cumulative"
    """``cumulative``: τ·Π(1 − step/T), the reference's compounding decay; ``linear``: τ·(1 − step/T)."""
    cache: ImageCacheMode = "none"
    """``prefix``: the text prompt's K/V are computed once and reused for every step."""
    seed: int = 0
    """Seed of :meth:`generator` (the CLI, evaluation); rollouts draw from the run's own generator."""

    @field_validator("schedule")
    @classmethod
    def _known_schedule(cls, v: str) -> str:
        try:
            get_schedule(v)
        except MMaDAError as exc:
            raise ValueError(str(exc)) from None
        return v

    def describe(self) -> str:
        s = f"maskgit steps{self.steps} cfg{self.guidance_scale:g}"
        return s + (f" cache={self.cache}" if self.cache != "none" else "")
