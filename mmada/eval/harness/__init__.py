"""lm-evaluation-harness model adapter: ``--model mmada``.

Generation tasks (GSM8K, MATH, …) run through the diffusion block sampler (``generate_text``);
likelihood tasks (multiple choice, …) through LLaDA's Monte-Carlo ELBO (``mmada.eval.elbo``),
both batched. Every sampler setting is a model argument, so it lands in lm-eval's results
``config.model_args`` and the run is reproducible from its output file.

lm-eval (0.4.x) has no plugin entry points for models, so the model is registered when this
module is imported. Run the harness through it (same arguments as ``lm_eval``)::

    python -m mmada.eval.harness --model mmada \\
        --model_args pretrained=CKPT,steps=256,gen_length=256,block_length=32,mc_num=128 \\
        --tasks gsm8k --num_fewshot 5 --batch_size 4 --output_path runs/lm_eval

or ``mmada eval harness -- --model mmada …``; from Python, ``import mmada.eval.harness`` then
``lm_eval.simple_evaluate(model="mmada", model_args=…)``. Offline tasks: ``--include_path DIR``
with a task YAML over local JSONL (``dataset_path: json``, ``dataset_kwargs.data_files``).

Model arguments:
    pretrained      checkpoint directory (config.json + safetensors + tokenizer.json)
    tokenizer       tokenizer dir or "builtin" when the checkpoint has none
    device, dtype   "cpu"/"cuda"/…, "bf16"/"fp32"
    steps, gen_length, block_length, temperature, cfg_scale, remasking, cache, prompt_cache, threshold,
    factor, stop_at_eos, seed
                    every field of the text sampler (mmada.diffusion.settings.SamplerSettings; defaults
                    256/256/32 as in LLaDA's harness); every generation is gen_length tokens (a task's
                    max_gen_toks is not used, as in LLaDA's harness) cut at the first <eos> and at the
                    task's ``until`` strings; ``seed`` also seeds the ELBO noise
    mc_num, mc_batch_size, ll_cfg_scale      ELBO estimator (128 / 16 / 0 as in LLaDA)
    greedy_check    compute ``is_greedy`` by greedy diffusion decoding of the continuation (default True)
    add_bos         prepend <bos> to every context (default True; the model is trained with it)
    max_length      longest context+continuation in tokens (default: the model's max_sequence_length)
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import lm_eval.models  # noqa: F401  (registers lm-eval's own models first, so they stay available)
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from mmada.diffusion.sampling import generate_text
from mmada.diffusion.settings import SamplerSettings
from mmada.errors import MMaDAError
from mmada.eval.elbo import elbo_loglikelihood, greedy_matches
from mmada.eval.runners import apply_stops

log = logging.getLogger(__name__)


def _as_bool(v) -> bool:
    if isinstance(v, bool):
        return v
    return str(v).strip().lower() in ("1", "true", "yes", "on")


@register_model("mmada")
class MMaDALM(TemplateLM):
    """lm-eval ``LM`` over an MMaDA / LLaDA checkpoint (see module docstring for arguments)."""

    def __init__(
        self,
        pretrained: str,
        tokenizer: str | None = None,
        device: str | None = "cpu",
        dtype: str | None = None,
        batch_size: int | str = 1,
        mc_num: int = 128,
        mc_batch_size: int = 16,
        ll_cfg_scale: float = 0.0,
        greedy_check: bool | str = True,
        add_bos: bool | str = True,
        max_length: int | None = None,
        max_batch_size: int | None = None,
        **sampler_args,
    ) -> None:
        super().__init__()
        unknown = sorted(set(sampler_args) - set(SamplerSettings.model_fields))
        if unknown:
            raise MMaDAError(
                f"unknown mmada model_args {unknown}; the arguments are listed in mmada.eval.harness's docstring"
            )
        if str(batch_size).startswith("auto"):
            raise MMaDAError("batch_size=auto is not supported by the mmada adapter; give a number")
        # Validate the sampler settings before loading (possibly large) weights.
        self.batch_size = int(batch_size)
        # LLaDA's harness defaults: 256 tokens in blocks of 32, one token per step
        self.sampler = SamplerSettings.make(**{"steps": 256, "gen_length": 256, "block_length": 32, **sampler_args})
        self.mc_num, self.mc_batch_size, self.ll_cfg_scale = int(mc_num), int(mc_batch_size), float(ll_cfg_scale)
        self.greedy_check, self.add_bos = _as_bool(greedy_check), _as_bool(add_bos)
        if self.mc_num % self.mc_batch_size:
            raise MMaDAError(f"mc_num={mc_num} must be a multiple of mc_batch_size={mc_batch_size}")
        if device and str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's CLI defaults to --device cuda; fall back instead of failing on CPU machines
            log.warning("device=%s requested but CUDA is not available; using cpu", device)
            device = "cpu"
        from mmada.inference import load_checkpoint

        self.lm = load_checkpoint(pretrained, tokenizer=tokenizer, device=device, dtype=dtype)
        self.model, self.tokenizer = self.lm.model, self.lm.tokenizer
        self.special = self.lm.builder.special
        self.pretrained = str(pretrained)
        self.max_length = int(max_length or self.model.config.max_sequence_length)
        if self.sampler.gen_length >= self.max_length:
            raise MMaDAError(f"gen_length={self.sampler.gen_length} leaves no room for a prompt within max_length={self.max_length}")

    # ------------------------------------------------------------------ lm-eval plumbing
    @property
    def eot_token_id(self) -> int:
        return self.special.eos

    @property
    def prefix_token_id(self) -> int:
        return self.special.bos

    @property
    def device(self):
        return self.lm.device

    @property
    def tokenizer_name(self) -> str:
        return self.pretrained.replace("/", "__")

    def get_model_info(self) -> dict:
        return {"model_name": self.pretrained, "model_type": "mmada-masked-diffusion"}

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) if chat_template is not False else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        # Specials are added explicitly (``_with_bos``), never by the tokenizer.
        return self.tokenizer.encode(string, add_special_tokens=False)

    def tok_decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _with_bos(self, ids: list[int]) -> list[int]:
        if self.add_bos and (not ids or ids[0] != self.special.bos):
            return [self.special.bos, *ids]
        return ids

    # ------------------------------------------------------------------ likelihood (ELBO)
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        prompts, answers = [], []
        for (_ctx, _cont), ctx_enc, cont_enc in requests:
            if not cont_enc:
                raise MMaDAError(f"empty continuation for context {_ctx[-60:]!r}")
            ctx = self._with_bos(list(ctx_enc))
            cont = list(cont_enc)[-(self.max_length - 1) :]
            ctx = ctx[-(self.max_length - len(cont)) :]  # left-truncate the context
            prompts.append(ctx)
            answers.append(cont)
        out: list[tuple[float, bool]] = []
        step = max(1, self.batch_size)
        for s in tqdm(range(0, len(requests), step), disable=disable_tqdm, desc="mmada loglikelihood"):
            p, a = prompts[s : s + step], answers[s : s + step]
            ll = elbo_loglikelihood(
                self.model, p, a, mc_num=self.mc_num, mc_batch_size=self.mc_batch_size,
                batch_size=step * self.mc_batch_size, cfg_scale=self.ll_cfg_scale,
                mask_id=self.special.mask, pad_id=self.special.eos, seed=self.sampler.seed,
            )
            greedy = (
                greedy_matches(self.model, p, a, mask_id=self.special.mask, pad_id=self.special.eos, batch_size=step)
                if self.greedy_check
                else [False] * len(p)
            )
            for i, (v, g) in enumerate(zip(ll.tolist(), greedy, strict=True)):
                res = (float(v), bool(g))
                out.append(res)
                self.cache_hook.add_partial("loglikelihood", requests[s + i][0], res)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """ELBO of each whole text given <bos>, over disjoint windows of ``max_length − 1`` tokens."""
        out = []
        win = self.max_length - 1
        for req in tqdm(requests, disable=disable_tqdm, desc="mmada loglikelihood_rolling"):
            (text,) = req.args
            ids = self.tok_encode(text)
            if not ids:
                out.append(0.0)
                continue
            chunks = [ids[i : i + win] for i in range(0, len(ids), win)]
            ll = elbo_loglikelihood(
                self.model, [[self.special.bos]] * len(chunks), chunks, mc_num=self.mc_num,
                mc_batch_size=self.mc_batch_size, batch_size=self.batch_size * self.mc_batch_size,
                mask_id=self.special.mask, pad_id=self.special.eos, seed=self.sampler.seed,
            )
            out.append(float(ll.sum()))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), out[-1])
        return out

    # ------------------------------------------------------------------ generation (diffusion sampler)
    def _decode_generation(self, ids: torch.Tensor) -> str:
        """Generated ids (gen_length,) → text, cut at the first <eos>/<eot> (the EOS fill is not text)."""
        toks = ids.tolist()
        for stop_id in (self.special.eos, self.special.eot):
            if stop_id in toks:
                toks = toks[: toks.index(stop_id)]
        return self.tok_decode(toks)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            _, gen_kwargs = req.args
            groups.setdefault(repr(sorted((gen_kwargs or {}).items(), key=lambda kv: kv[0])), []).append(i)
        gen = self.sampler.generator(self.device)
        pbar = tqdm(total=len(requests), disable=disable_tqdm, desc="mmada generate_until")
        for idx in groups.values():
            gen_kwargs = dict(requests[idx[0]].args[1] or {})
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(gen_kwargs.get("temperature", self.sampler.temperature))
            if not _as_bool(gen_kwargs.get("do_sample", temperature > 0)):
                temperature = 0.0
            settings = self.sampler.model_copy(update={"temperature": temperature})  # a task may set it
            max_prompt = self.max_length - settings.gen_length
            for s in range(0, len(idx), self.batch_size):
                batch = idx[s : s + self.batch_size]
                enc = [self._with_bos(self.tok_encode(requests[i].args[0]))[-max_prompt:] for i in batch]
                P = max(len(e) for e in enc)
                ids = torch.full((len(enc), P), self.special.eos, dtype=torch.long)
                attn = torch.zeros((len(enc), P), dtype=torch.bool)
                for j, e in enumerate(enc):  # left padding
                    ids[j, P - len(e) :] = torch.tensor(e, dtype=torch.long)
                    attn[j, P - len(e) :] = True
                out = generate_text(
                    self.model, ids.to(self.device), settings, mask_id=self.special.mask, eos_id=self.special.eos,
                    eot_id=self.special.eot,
                    attention_mask=attn.to(self.device), generator=gen,
                )[:, P:].cpu()
                for j, i in enumerate(batch):
                    text = apply_stops(self._decode_generation(out[j]), until)
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                pbar.update(len(batch))
        pbar.close()
        return [r if r is not None else "" for r in results]


def main(argv: list[str] | None = None) -> None:
    """``python -m mmada.eval.harness …``: lm-eval's own CLI with the ``mmada`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
