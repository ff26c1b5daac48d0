"""``params.yaml``: the config file each stage starts from, and only what the pipeline changes in it.

    pretrain:
      config: configs/train/tiny_pretrain.yaml              # the base TrainConfig (a DVC dep of the stage)
      trainer: {max_steps: 400, val_every_n_steps: 400}     # deep-merged over it
      optim: {lr: 0.002, warmup_steps: 30}

The sections, and the typed config each stage runs with once the file is resolved:

    tokenizer          TokenizerParams   (this module; written whole)
    curate.<dataset>   CurationSpec      spec: data_specs/<dataset>.yaml   + what differs
    vq                 VQTrainConfig     config: configs/vq/tiny.yaml      + what differs
    pretrain/sft/grpo  TrainConfig       config: configs/train/tiny_*.yaml + what differs
    evaluate           EvalParams        (this module; written whole)

Merging: a mapping merges into a mapping key by key, a mapping over a list sets the items it names by
position (``sources: {'0': {n: 2000}}``), anything else replaces. Paths are relative to the project
root. A bad value, in this file or in a named one, is reported as
``params.yaml: pretrain.optim.lr: Input should be greater than 0``. ``dvc exp run -S`` only sets keys
the file has, so the training sections always carry ``optim.lr`` and ``trainer.max_steps``
(:data:`SWEEP_KEYS`): ``dvc exp run -S sft.optim.lr=0.002``; any other field with
``-S '++sft.optim.weight_decay=0.1'``.

``mmada pipeline params --write [--profile full]`` writes the file from :data:`PROFILES`: ``demo``
keeps the whole pipeline within ~12 minutes on 2 CPU cores, ``full`` is the configs' own sizes.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from mmada.config import Strict, read_yaml, validate
from mmada.data.specs import CurationSpec
from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.errors import ConfigError
from mmada.files import write_text
from mmada.pipeline.stages import DATASETS, PARAMS_FILE, STAGES, TOKENIZER_DIR, TRAIN_STAGES, VQ_DIR, data_dir
from mmada.training.config import TrainConfig
from mmada.training.vq import VQTrainConfig


class TokenizerParams(Strict):
    """The text tokenizer: a byte-level BPE trained on the built-in corpus (deterministic, ~1 s)."""

    vocab_size: int = Field(1024, ge=512, le=65536, description="Text vocabulary size; must equal the model "
                            "preset's llm_vocab_size (1024 for tiny).")


class EvalParams(Strict):
    """What the ``evaluate`` stage measures and with which sampler settings."""

    math_n: int = Field(100, ge=1, le=10000, description="Held-out arithmetic word problems (exact answer check).")
    math_protocol: Literal["gsm8k_strict", "gsm8k_flexible", "boxed", "answer_tag"] = Field(
        "gsm8k_flexible", description="Answer-extraction protocol of the math suite.")
    math_prompt: Literal["reasoning", "lm_eval"] = Field(
        "reasoning", description="reasoning: the bare question after MMaDA's <think> instruction, as in the curated "
        "SFT data and UniGRPO prompts; lm_eval: lm-eval's 'Question: ...\\nAnswer:' wrapping.")
    math_difficulty: tuple[int, int] | None = Field(
        (1, 1), description="Operations per held-out arithmetic problem, an inclusive [lo, hi] (the curated data's "
        "range is the natural choice); null: the generator's default 1-3.")
    mmu_n: int = Field(16, ge=0, le=10000, description="Shapes scenes whose VQA questions are asked (0: skip).")
    mmu_prompt: Literal["reasoning", "plain"] = Field(
        "reasoning", description="reasoning: the question after MMaDA's <think> instruction, as in the curated VQA "
        "traces, scoring the answer after </think>; plain: the bare question, scoring the whole answer.")
    held_out: bool = Field(
        True, description="Drop evaluation items the training shards hold: arithmetic questions, VQA questions "
        "about the same scene, t2i scenes (as `mmada eval --exclude-data` does); reported per suite.")
    t2i_n: int = Field(32, ge=0, le=10000, description="Shapes captions to generate images for (0: skip).")
    recon_n: int = Field(32, ge=0, le=10000, description="Images reconstructed by the image tokenizer (0: skip).")
    baseline: Literal["sft", "none"] = Field(
        "sft", description="sft: also evaluate the @sft model UniGRPO started from (same problems, same sampler), "
        "so the table shows what UniGRPO changed; none: only the evaluated model.")
    data_seed: int = Field(4242, description="Seed of the held-out built-in problems/scenes (training used seeds 0/1).")
    sampler: SamplerSettings = Field(
        default_factory=lambda: SamplerSettings(steps=20, gen_length=40, block_length=40),
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
    """Every stage's resolved config (``params.yaml`` with the named files merged in)."""

    tokenizer: TokenizerParams = Field(default_factory=TokenizerParams)
    curate: CurateParams
    vq: VQTrainConfig
    pretrain: TrainConfig
    sft: TrainConfig
    grpo: TrainConfig
    evaluate: EvalParams = Field(default_factory=EvalParams)


NAMED: dict[str, str] = {s.params[0]: s.file_key for s in STAGES if s.file_key}
"""The sections that name a base file, and the key that names it (:attr:`Stage.file_key`)."""

SWEEP_KEYS = (("optim", "lr"), ("trainer", "max_steps"))
"""Written in every training section (equal to the file's value or not), so ``dvc exp run -S`` can set them."""


# ------------------------------------------------------------------------------------------------
# resolving


def merge(base: Any, over: Any, where: str) -> Any:
    """``over`` deep-merged into a copy of ``base`` (see the module docstring)."""
    if isinstance(over, dict) and isinstance(base, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base[k], v, f"{where}.{k}") if k in base else copy.deepcopy(v)
        return out
    if isinstance(over, dict) and isinstance(base, list):
        out_list = list(base)
        for k, v in over.items():
            if not str(k).isdigit() or int(k) >= len(base):
                raise ConfigError(f"{where}: {k!r} is not an item of the list it merges into ({len(base)} items)")
            out_list[int(k)] = merge(base[int(k)], v, f"{where}.{k}")
        return out_list
    return copy.deepcopy(over)


def _node(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def resolve(raw: dict, where: str = PARAMS_FILE, root: str | Path = ".") -> dict[str, Any]:
    """``raw`` (a params file) with every named section replaced by its file (a path relative to ``root``,
    the project root) merged with the section."""
    tree = copy.deepcopy(raw)
    for section, key in NAMED.items():
        node = _node(tree, section)
        if node is None:
            continue  # validation reports the missing section
        if not isinstance(node, dict) or not node.get(key):
            raise ConfigError(f"{where}: {section}.{key}: missing: name the file this section starts from "
                              f"(see `mmada pipeline params --write`)")
        rest = {k: v for k, v in node.items() if k != key}
        path = Path(root) / str(node[key])
        if not path.is_file():
            raise ConfigError(f"{where}: {section}.{key}: {str(node[key])!r} does not exist")
        parent, _, leaf = section.rpartition(".")
        (_node(tree, parent) if parent else tree)[leaf] = merge(read_yaml(path), rest, f"{where}: {section}")
    return tree


def load_params(path: str | Path = PARAMS_FILE, root: str | Path = ".") -> PipelineParams:
    """Read ``path``, merge the files it names (relative to ``root``) in and validate every section; errors
    name the field."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such parameters file; create the default one with "
                          "`mmada pipeline params --write` (or pass --params FILE)")
    return validate(PipelineParams, resolve(read_yaml(p), str(p), root), str(p))


def params_dict(params: PipelineParams) -> dict[str, Any]:
    """The resolved configs as plain data (the data specs as written: discriminators and set fields)."""
    d = params.model_dump(mode="json")
    d["curate"] = {k: getattr(params.curate, k).model_dump(mode="json", exclude_unset=True) for k in DATASETS}
    return d


def write_resolved(params: PipelineParams, folder: str | Path) -> Path:
    """``params`` as files: each named section's resolved config in ``folder/<section>.yaml`` and
    ``folder/params.yaml`` naming them (how a Prefect ``pipeline`` run hands its form to its stages)."""
    folder = Path(folder).resolve()
    tree = params_dict(params)
    for section, key in NAMED.items():
        parent, _, leaf = section.rpartition(".")
        holder = _node(tree, parent) if parent else tree
        file = write_text(folder / f"{section}.yaml", yaml.safe_dump(holder[leaf], sort_keys=False))
        holder[leaf] = {key: str(file)}
    return write_text(folder / PARAMS_FILE, yaml.safe_dump(tree, sort_keys=False))


# ------------------------------------------------------------------------------------------------
# the written file: the repository's tiny configs + what the pipeline changes


def _curate(name: str, **changes: Any) -> dict[str, Any]:
    return {"spec": f"data_specs/{name}.yaml", **changes, "tokenizer": TOKENIZER_DIR, "output": data_dir(name)}


_ORDER = ("config", "model", "data", "loss", "optim", "trainer", "checkpoint", "samples", "grpo")


def _train(stage: str, *, data: dict | None = None, **changes: Any) -> dict[str, Any]:
    """A training stage reads the pipeline's image tokenizer and samples once, at the end of the stage."""
    d = {"config": f"configs/train/tiny_{stage}.yaml", "data": {"image_tokenizer": VQ_DIR, **(data or {})},
         "samples": {"every_n_steps": 0}, **changes}
    return {k: d[k] for k in _ORDER if k in d}


# The demo's model: the tiny preset at half its width (1.3M parameters): ~2.5x the steps per second on a CPU
# at about the same accuracy per step (docs/results.md), so more of the demo's minutes go to learning.
TINY_DEMO_MODEL = {"d_model": 128, "mlp_hidden_size": 344}

PROFILES: dict[str, dict[str, Any]] = {
    "demo": {
        "curate": {
            # one-step problems: what the demo model learns in minutes (evaluate.math_difficulty)
            "arithmetic": _curate("arithmetic", sources={"0": {"n": 3000, "difficulty": [1, 1]}},
                                  shards={"max_samples": 1000}),
            "shapes": _curate("shapes", sources={"0": {"n": 1000}}, shards={"max_samples": 500}),
            "shapes_vqa": _curate("shapes_vqa", sources={"0": {"n": 300}}, shards={"max_samples": 500}),
            "digits": _curate("digits"),
        },
        "vq": {"config": "configs/vq/tiny.yaml", "data": {"num_train": 4096, "num_val": 128},
               "trainer": {"max_steps": 500}},
        "pretrain": _train("pretrain", model={"tokenizer": TOKENIZER_DIR, "overrides": TINY_DEMO_MODEL},
                           data={"val_batches": 4, "streams": {"lm": {"batch_size": 8, "max_text_len": 64}}},
                           trainer={"max_steps": 500, "val_every_n_steps": 500}, optim={"warmup_steps": 30},
                           checkpoint={"every_n_steps": 100}),
        # Text budgets: a chat row is the prompt (at most 37 tokens: MMaDA's <think> instruction is one token of
        # the built-in tokenizer) and an EOS-filled answer region of ~40; a VQA row's text is a 20-token prompt
        # and the same region. The model learns how long that region is: evaluate.sampler.gen_length and the
        # UniGRPO rollouts' gen_length are 40 to match (at 48 against a 38-token region the same @sft model
        # answered 8% instead of 24-30%, writing VQA phrases past its arithmetic answers).
        "sft": _train("sft", data={"val_batches": 4, "streams": {"chat": {"batch_size": 32, "max_text_len": 76},
                                                                 "mmu": {"batch_size": 8, "max_text_len": 60},
                                                                 "t2i": {"batch_size": 8}}},
                      loss={"coeffs": {"chat": 1.0, "mmu": 1.0, "t2i": 1.0}},
                      trainer={"max_steps": 450, "val_every_n_steps": 450},
                      optim={"lr": 2e-3, "warmup_steps": 20}, checkpoint={"every_n_steps": 150}),
        "grpo": _train("grpo", trainer={"max_steps": 8}, checkpoint={"every_n_steps": 8},
                       grpo={"num_generations": 4, "sampler": {"steps": 20, "gen_length": 40, "block_length": 40}}),
    },
    "full": {
        "curate": {n: _curate(n) for n in DATASETS},
        "vq": {"config": "configs/vq/tiny.yaml"},
        "pretrain": _train("pretrain", model={"tokenizer": TOKENIZER_DIR}, data={"val_batches": 4}),
        "sft": _train("sft", data={"val_batches": 4}),
        "grpo": _train("grpo"),
    },
}
"""What ``params.yaml`` changes in the named files: ``demo`` (``make demo`` within ~12 minutes on 2 CPU
cores) and ``full`` (the configs' own sizes, about an hour; only the pipeline's paths set)."""


def profile_params(profile: str = "demo", root: str | Path = ".") -> dict[str, Any]:
    """The content of ``params.yaml`` for ``profile``: tokenizer and evaluate whole, the other sections
    naming their file with what differs (and :data:`SWEEP_KEYS`, read from the file where not changed)."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown params profile {profile!r}; expected one of {', '.join(PROFILES)}")
    tree = {"tokenizer": TokenizerParams().model_dump(mode="json"), **copy.deepcopy(PROFILES[profile]),
            "evaluate": EvalParams().model_dump(mode="json")}
    for stage in TRAIN_STAGES:
        section = tree[stage]
        base = validate(TrainConfig, read_yaml(Path(root) / section["config"]), section["config"]).model_dump()
        for group, key in SWEEP_KEYS:
            section[group] = {key: base[group][key], **section.get(group, {})}
        tree[stage] = {k: section[k] for k in _ORDER if k in section}
    return tree


class _Dumper(yaml.SafeDumper):
    """Short mappings and lists of scalars in flow style (``trainer: {max_steps: 400}``, ``[1, 2, 2]``)."""


def _flat(data: dict | list) -> bool:
    values = data.values() if isinstance(data, dict) else data
    return all(not isinstance(v, (dict, list)) for v in values)


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=_flat(data))


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    flow = _flat(data) and len(str(data)) <= 80
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(dict, _represent_dict)


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=120)


def dump_params(params: PipelineParams) -> str:
    """The resolved configs as YAML (``mmada pipeline params``)."""
    return dump_yaml(params_dict(params))


PARAMS_HEADER = """\
# Parameters of the tiny end-to-end pipeline. Each section names the config file its stage starts from
# (config: / spec:, a DVC dep of the stage) and holds only what the pipeline changes in it, deep-merged
# over the file (a mapping over a list sets items by position: sources: {'0': {n: 2000}}); tokenizer and
# evaluate are whole (see mmada/pipeline/params.py). The training sections always carry optim.lr and
# trainer.max_steps: `dvc exp run -S` only sets keys this file has (other fields: -S '++sft.optim.eps=1e-6').
#   mmada pipeline params                          # the resolved configs the stages run with
#   mmada pipeline params --check                  # validate them (errors name the field)
#   mmada pipeline params --write [--profile full] # rewrite this file: demo sizes (~12 min on 2 CPU cores)
#                                                  # or the configs' own sizes (about an hour)
#   dvc exp run -S sft.optim.lr=0.002 -S pretrain.trainer.max_steps=200   # a sweep point
"""


def write_params(tree: dict[str, Any], path: str | Path = PARAMS_FILE) -> Path:
    return write_text(path, PARAMS_HEADER + dump_yaml(tree))
