"""``params.yaml``: the typed parameters of every pipeline stage, in one file.

Each section *is* the stage's own pydantic config, so the same model validates ``params.yaml``
(``dvc repro``), renders the Prefect UI form and is dumped into MLflow params:

    tokenizer          TokenizerParams     (this module)
    curate.<dataset>   CurationSpec        (mmada.data.specs; data_specs/<dataset>.yaml + demo sizes)
    vq                 VQTrainConfig       (mmada.training.vq;  configs/vq/tiny.yaml + demo steps)
    pretrain/sft/grpo  TrainConfig         (mmada.training.config; configs/train/tiny_*.yaml + demo steps)
    evaluate           EvalParams          (this module)

``mmada pipeline params --write`` regenerates the file from those base configs plus
:data:`DEMO_OVERRIDES` (sizes that keep the whole pipeline within ~15 minutes on 2 CPU cores).
Edit it by hand or sweep with ``dvc exp run -S pretrain.optim.lr=3e-4``; a bad value is reported
as ``params.yaml: pretrain.optim.lr: Input should be greater than 0``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from mmada.config import Strict, load_config, read_yaml, validate
from mmada.data.specs import CurationSpec
from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.errors import ConfigError
from mmada.files import write_text
from mmada.pipeline.stages import DATASETS, PARAMS_FILE, TOKENIZER_DIR, VQ_DIR, VQ_OUTPUT_DIR, data_dir
from mmada.training.config import STAGE_TASKS, TrainConfig
from mmada.training.vq import VQTrainConfig


def grpo_available() -> bool:
    """Whether this build's ``mmada train`` has the UniGRPO stage."""
    return "grpo" in STAGE_TASKS


class TokenizerParams(Strict):
    """The text tokenizer: a byte-level BPE trained on the built-in corpus (deterministic, ~1 s)."""

    vocab_size: int = Field(1024, ge=512, le=65536, description="Text vocabulary size; must equal the model "
                            "preset's llm_vocab_size (1024 for tiny).")


class EvalParams(Strict):
    """What the ``evaluate`` stage measures and with which sampler settings."""

    math_n: int = Field(64, ge=1, le=10000, description="Held-out arithmetic word problems (exact answer check).")
    math_protocol: Literal["gsm8k_strict", "gsm8k_flexible", "boxed", "answer_tag"] = Field(
        "gsm8k_flexible", description="Answer-extraction protocol of the math suite.")
    math_prompt: Literal["reasoning", "lm_eval"] = Field(
        "reasoning", description="reasoning: the bare question after MMaDA's <think> instruction, as in the curated "
        "SFT data and UniGRPO prompts; lm_eval: lm-eval's 'Question: ...\\nAnswer:' wrapping.")
    mmu_n: int = Field(16, ge=0, le=10000, description="Shapes scenes whose VQA questions are asked (0: skip).")
    t2i_n: int = Field(32, ge=0, le=10000, description="Shapes captions to generate images for (0: skip).")
    recon_n: int = Field(32, ge=0, le=10000, description="Images reconstructed by the image tokenizer (0: skip).")
    baseline: Literal["sft", "none"] = Field(
        "sft", description="sft: also evaluate the @sft model UniGRPO started from (same problems, same sampler), "
        "so the table shows what UniGRPO changed; none: only the evaluated model.")
    data_seed: int = Field(4242, description="Seed of the held-out built-in problems/scenes (training used seeds 0/1).")
    sampler: SamplerSettings = Field(
        default_factory=lambda: SamplerSettings(steps=32, gen_length=64, block_length=32),
        description="Text sampler of the math and understanding suites (every option of mmada generate).")
    image_sampler: ImageSamplerSettings = Field(
        default_factory=lambda: ImageSamplerSettings(steps=12, guidance_scale=2.0),
        description="MaskGIT sampler of the text-to-image suite.")
    batch_size: int = Field(16, ge=1, le=1024)


class CurateParams(Strict):
    """The four built-in data specs of the tiny pipeline."""

    arithmetic: CurationSpec
    shapes: CurationSpec
    shapes_vqa: CurationSpec
    digits: CurationSpec


class PipelineParams(Strict):
    """Every stage's parameters (the content of ``params.yaml``)."""

    tokenizer: TokenizerParams = Field(default_factory=TokenizerParams)
    curate: CurateParams
    vq: VQTrainConfig
    pretrain: TrainConfig
    sft: TrainConfig
    grpo: TrainConfig | None = Field(None, description="UniGRPO stage config (null until this build has it).")
    evaluate: EvalParams = Field(default_factory=EvalParams)

    def section(self, dotted: str) -> Any:
        node: Any = self
        for part in dotted.split("."):
            node = getattr(node, part)
        return node


def validate_params(data: Any, where: str = PARAMS_FILE) -> PipelineParams:
    return validate(PipelineParams, data, where)


def load_params(path: str | Path = PARAMS_FILE) -> PipelineParams:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such parameters file; create the default one with "
                          "`mmada pipeline params --write` (or pass --params FILE)")
    return validate_params(read_yaml(p), str(p))


class _Dumper(yaml.SafeDumper):
    """Lists of scalars in flow style (``[1, 2, 2]``) so the file reads like the configs it came from."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def dump_params(params: PipelineParams) -> str:
    return yaml.dump(params_dict(params), Dumper=_Dumper, sort_keys=False, width=120)


def params_dict(params: PipelineParams) -> dict[str, Any]:
    d = params.model_dump(mode="json")
    # the specs as written in data_specs/ (discriminators and set fields, not every default)
    d["curate"] = {k: getattr(params.curate, k).model_dump(mode="json", exclude_unset=True) for k in DATASETS}
    return d


# ------------------------------------------------------------------------------------------------
# the default params.yaml: the repository's tiny configs + demo sizes

_TRAIN_COMMON = [
    f"model.tokenizer={TOKENIZER_DIR}",
    f"data.image_tokenizer={VQ_DIR}",
    "samples.every_n_steps=0",        # samples once, at the end of the stage
    "checkpoint.every_n_steps=100",
    "data.val_batches=4",
]

DEMO_OVERRIDES: dict[str, list[str]] = {
    "curate.arithmetic": ["sources.0.n=2000", "shards.max_samples=1000"],
    "curate.shapes": ["sources.0.n=1000", "shards.max_samples=500"],
    "curate.shapes_vqa": ["sources.0.n=300", "shards.max_samples=500"],
    "curate.digits": [],
    "vq": ["trainer.max_steps=600", "trainer.val_every_n_steps=600", "data.num_train=4096", "data.num_val=128",
           f"output_dir={VQ_OUTPUT_DIR}"],
    "pretrain": [*_TRAIN_COMMON, "trainer.max_steps=400", "trainer.val_every_n_steps=400", "optim.warmup_steps=30"],
    "sft": [*_TRAIN_COMMON[1:], "trainer.max_steps=250", "trainer.val_every_n_steps=250", "optim.warmup_steps=20"],
    "grpo": [f"data.image_tokenizer={VQ_DIR}", "samples.every_n_steps=0", "trainer.max_steps=8",
             "checkpoint.every_n_steps=8", "grpo.num_generations=4"],
}
"""Sizes that keep ``make demo`` (the whole pipeline) within ~12 minutes on 2 CPU cores."""

FULL_OVERRIDES: dict[str, list[str]] = {
    **{f"curate.{n}": [] for n in DATASETS},
    "vq": [f"output_dir={VQ_OUTPUT_DIR}"],
    "pretrain": [*_TRAIN_COMMON, "checkpoint.every_n_steps=200"],
    "sft": [*_TRAIN_COMMON[1:], "checkpoint.every_n_steps=200"],
    "grpo": [f"data.image_tokenizer={VQ_DIR}", "samples.every_n_steps=0"],
}
"""The repository's configs and data specs as they are (only the pipeline's paths set): about an hour on
2 CPU cores."""

PROFILES = {"demo": DEMO_OVERRIDES, "full": FULL_OVERRIDES}


BASE_CONFIGS = {
    "vq": "configs/vq/tiny.yaml",
    "pretrain": "configs/train/tiny_pretrain.yaml",
    "sft": "configs/train/tiny_sft.yaml",
    "grpo": "configs/train/tiny_grpo.yaml",
}


def default_params(root: str | Path = ".", profile: str = "demo") -> PipelineParams:
    """The tiny pipeline's parameters: the repository's configs and data specs with the ``profile``'s
    overrides (:data:`DEMO_OVERRIDES` or :data:`FULL_OVERRIDES`)."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown params profile {profile!r}; expected one of {', '.join(PROFILES)}")
    overrides = PROFILES[profile]
    from mmada.data.specs import load_spec
    from mmada.training.config import load_train_config

    root = Path(root)
    curate = {}
    for name in DATASETS:
        spec = load_spec(root / f"data_specs/{name}.yaml",
                         [*overrides[f"curate.{name}"], f"tokenizer={TOKENIZER_DIR}", f"output={data_dir(name)}"])
        curate[name] = spec
    vq = load_config(VQTrainConfig, root / BASE_CONFIGS["vq"], overrides["vq"])
    train = {s: load_train_config(root / BASE_CONFIGS[s], overrides[s]) for s in ("pretrain", "sft")}
    grpo = None
    if grpo_available() and (root / BASE_CONFIGS["grpo"]).is_file():
        grpo = load_train_config(root / BASE_CONFIGS["grpo"], overrides["grpo"])
    return PipelineParams(tokenizer=TokenizerParams(), curate=CurateParams(**curate), vq=vq, grpo=grpo, **train)


PARAMS_HEADER = """\
# Parameters of the tiny end-to-end pipeline (dvc.yaml stages read their section; the Prefect
# `pipeline` deployment shows them as a form). Each section is that stage's typed config:
#   tokenizer: TokenizerParams   curate.*: CurationSpec   vq: VQTrainConfig
#   pretrain / sft / grpo: TrainConfig   evaluate: EvalParams        (see mmada/pipeline/params.py)
# Regenerate from configs/ and data_specs/ with `mmada pipeline params --write` (demo sizes, ~12 min on
# 2 CPU cores) or `mmada pipeline params --write --profile full` (the configs' own sizes, about an hour).
# Sweep:  dvc exp run -S pretrain.optim.lr=0.0005 -S sft.trainer.max_steps=200
"""


def write_params(params: PipelineParams, path: str | Path = PARAMS_FILE) -> Path:
    return write_text(path, PARAMS_HEADER + dump_params(params))
