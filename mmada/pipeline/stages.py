"""The one definition of the pipeline's stages; ``dvc.yaml`` is generated from it.

Each :class:`Stage` names its command, the ``params.yaml`` sections it reads, the files it needs
(``deps``: upstream outputs, the code that decides its result and the config file its params section
names), what it writes (``outs``,
``metrics``, ``plots``) and the stages upstream of it. Three things read this list:

* ``mmada pipeline generate`` renders ``dvc.yaml`` (checked in; a test keeps them equal),
* ``mmada pipeline stage NAME`` checks the upstream outputs exist before running a stage,
* the Prefect ``pipeline`` flow runs each stage's command as a subprocess task, in this order.

Paths are relative to the project root. Model checkpoints are not DVC outputs: the training
stages write a small *model reference* (registered name/version/URI/sha256) and MLflow holds the
weights (docs/pipeline.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mmada.errors import MMaDAError
from mmada.files import write_text

StageKind = Literal["tokenizer", "curate", "vq", "train", "evaluate"]

# ------------------------------------------------------------------------------------------------
# where things go (relative to the project root)

TOKENIZER_DIR = "runs/tokenizer"
DATASETS = ("arithmetic", "shapes", "shapes_vqa", "digits")
VQ_OUTPUT_DIR = "runs/vq/tiny"
VQ_DIR = f"{VQ_OUTPUT_DIR}/tokenizer"
PIPELINE_DIR = "runs/pipeline"
EVAL_DIR = f"{PIPELINE_DIR}/eval"
TRAIN_STAGES = ("pretrain", "sft", "grpo")
PARAMS_FILE = "params.yaml"


def data_dir(name: str) -> str:
    return f"runs/data/{name}"


def model_ref(stage: str) -> str:
    """The small JSON that stands for a registered model version (a DVC out, ``cache: false``)."""
    return f"{PIPELINE_DIR}/models/{stage}.json"


def metrics_file(stage: str) -> str:
    return f"{PIPELINE_DIR}/metrics/{stage}.json"


def plot_file(stage: str) -> str:
    return f"{PIPELINE_DIR}/plots/{stage}.csv"


# Code whose change must re-run a stage (directories are hashed by DVC; .dvcignore drops caches).
_TRAIN_CODE = ["mmada/training", "mmada/models", "mmada/diffusion", "mmada/data/loading.py"]
# The image tokenizer's training: its module, config and images, and the harness it runs on.
_VQ_CODE = ["mmada/training/vq", "mmada/training/harness.py", "mmada/training/specs.py", "mmada/training/callbacks.py",
            "mmada/training/trainer.py", "mmada/training/optim.py", "mmada/data/vq.py"]


@dataclass(frozen=True)
class Plot:
    path: str
    x: str
    y: str
    title: str


@dataclass(frozen=True)
class Stage:
    name: str
    kind: StageKind
    desc: str
    params: tuple[str, ...]
    deps: tuple[str, ...]
    outs: tuple[str, ...] = ()
    """Cached outputs (shards, tokenizers: small directories DVC keeps in its cache)."""
    refs: tuple[str, ...] = ()
    """Uncached outputs (model references, evaluation samples): regenerated, never restored."""
    metrics: tuple[str, ...] = ()
    plots: tuple[Plot, ...] = ()
    upstream: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    file_key: str | None = None
    """The key of its ``params.yaml`` section that names the config file the stage starts from (``config`` /
    ``spec``); that file is a DVC dep of the stage (``${pretrain.config}``, resolved from params.yaml)."""

    @property
    def file_param(self) -> str | None:
        """``pretrain.config``: where params.yaml names the stage's config file."""
        return f"{self.params[0]}.{self.file_key}" if self.file_key else None

    @property
    def argv(self) -> list[str]:
        """The stage's command (``python`` is the project environment's interpreter)."""
        return ["python", "-m", "mmada", "pipeline", "stage", self.name]

    @property
    def cmd(self) -> str:
        return " ".join(self.argv)

    def outputs(self) -> list[str]:
        return [*self.outs, *self.refs, *self.metrics, *(p.path for p in self.plots)]


def _build() -> list[Stage]:
    stages = [
        Stage("tokenizer", "tokenizer", "Train the built-in byte-level BPE text tokenizer",
              params=("tokenizer",), deps=("mmada/tokenization",), outs=(TOKENIZER_DIR,)),
    ]
    for name in DATASETS:
        stages.append(Stage(
            f"curate-{name}", "curate", f"Curate the built-in {name!r} data spec into WebDataset shards",
            params=(f"curate.{name}",), deps=(TOKENIZER_DIR, "mmada/data"), outs=(data_dir(name),),
            upstream=("tokenizer",), extra={"dataset": name}, file_key="spec"))
    stages.append(Stage(
        "vq", "vq", "Train the tiny MAGVIT-v2 image tokenizer (32x32 -> 8x8 codes)",
        params=("vq",), deps=(*_VQ_CODE, "mmada/models/vq"), outs=(VQ_DIR,),
        metrics=(metrics_file("vq"),), plots=(Plot(plot_file("vq"), "step", "train_loss", "image tokenizer loss"),),
        file_key="config"))
    stages.append(Stage(
        "pretrain", "train", "Stage 1: t2i + LM + captioning pretraining; registers mmada-tiny@pretrain",
        params=("pretrain",),
        deps=(TOKENIZER_DIR, data_dir("arithmetic"), data_dir("shapes"), data_dir("digits"), VQ_DIR, *_TRAIN_CODE),
        refs=(model_ref("pretrain"),), metrics=(metrics_file("pretrain"),),
        plots=(Plot(plot_file("pretrain"), "step", "train_loss", "pretraining loss"),),
        upstream=("tokenizer", "curate-arithmetic", "curate-shapes", "curate-digits", "vq"), file_key="config"))
    stages.append(Stage(
        "sft", "train", "Stage 2: mixed long-CoT SFT from @pretrain; registers mmada-tiny@sft",
        params=("sft",),
        deps=(model_ref("pretrain"), data_dir("arithmetic"), data_dir("shapes_vqa"), data_dir("shapes"), VQ_DIR,
              *_TRAIN_CODE),
        refs=(model_ref("sft"),), metrics=(metrics_file("sft"),),
        plots=(Plot(plot_file("sft"), "step", "train_loss", "SFT loss"),),
        upstream=("pretrain", "curate-arithmetic", "curate-shapes_vqa", "curate-shapes", "vq"),
        extra={"init_from": "pretrain"}, file_key="config"))
    stages.append(Stage(
        "grpo", "train", "Stage 3: UniGRPO from @sft; registers mmada-tiny@grpo",
        params=("grpo",),
        deps=(model_ref("sft"), data_dir("arithmetic"), data_dir("shapes_vqa"), data_dir("shapes"), VQ_DIR,
              *_TRAIN_CODE, "mmada/rl"),
        refs=(model_ref("grpo"),), metrics=(metrics_file("grpo"),),
        plots=(Plot(plot_file("grpo"), "step", "reward", "UniGRPO reward"),),
        upstream=("sft", "curate-arithmetic", "curate-shapes_vqa", "curate-shapes", "vq"),
        extra={"init_from": "sft"}, file_key="config"))
    stages.append(Stage(
        "evaluate", "evaluate", "Evaluate @grpo (and the @sft it started from): math, image understanding, text-to-image, tokenizer "
        "reconstructions",
        params=("evaluate",), deps=(model_ref("grpo"), model_ref("sft"), VQ_DIR, "mmada/eval"),
        refs=(EVAL_DIR,), metrics=(metrics_file("eval"),), upstream=("sft", "grpo", "vq"), extra={"model_from": "grpo"}))
    return stages


STAGES: list[Stage] = _build()
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def get_stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise MMaDAError(f"unknown stage {name!r}; the stages are: {', '.join(STAGE_NAMES)}")


def producer_of(path: str) -> Stage | None:
    """The stage whose outputs include ``path`` (None for source files)."""
    for s in STAGES:
        if path in s.outputs():
            return s
    return None


def upstream_closure(names: list[str]) -> list[str]:
    """``names`` plus every stage they depend on, in pipeline order."""
    want: set[str] = set()

    def add(n: str) -> None:
        if n not in want:
            want.add(n)
            for u in get_stage(n).upstream:
                add(u)

    for n in names:
        add(n)
    return [s.name for s in STAGES if s.name in want]


def downstream_closure(names: list[str]) -> list[str]:
    """``names`` plus every stage that depends on them, in pipeline order."""
    want = set(names)
    for s in STAGES:
        if any(u in want for u in s.upstream):
            want.add(s.name)
    return [s.name for s in STAGES if s.name in want]


# ------------------------------------------------------------------------------------------------
# dvc.yaml

DVC_HEADER = """\
# GENERATED from mmada/pipeline/stages.py by `mmada pipeline generate`; do not edit by hand
# (tests/test_pipeline_stages.py checks this file equals the generated one).
#
# The tiny end-to-end pipeline: text tokenizer -> curate -> image tokenizer -> pretrain -> SFT ->
# UniGRPO -> evaluate. Parameters live in params.yaml: each section names the config file its stage
# starts from (a dep below: ${pretrain.config}) and holds what the pipeline changes in it.
#   dvc repro                                  # or: mmada pipeline (adds progress + a summary)
#   dvc exp run -S sft.optim.lr=0.001          # a sweep point
#   dvc metrics show ; dvc plots show          # eval table, loss / reward curves
"""


def dvc_stage(s: Stage) -> dict[str, Any]:
    deps = [*([f"${{{s.file_param}}}"] if s.file_param else []), *s.deps]
    d: dict[str, Any] = {"desc": s.desc, "cmd": s.cmd, "deps": deps, "params": list(s.params)}
    outs: list[Any] = list(s.outs) + [{p: {"cache": False}} for p in s.refs]
    if outs:
        d["outs"] = outs
    if s.metrics:
        d["metrics"] = [{p: {"cache": False}} for p in s.metrics]
    if s.plots:
        d["plots"] = [{p.path: {"cache": False, "x": p.x, "y": p.y, "title": p.title}} for p in s.plots]
    return d


def dvc_yaml_text() -> str:
    body = {"stages": {s.name: dvc_stage(s) for s in STAGES}}
    return DVC_HEADER + yaml.safe_dump(body, sort_keys=False, width=120)


def write_dvc_yaml(root: str | Path = ".") -> Path:
    return write_text(Path(root) / "dvc.yaml", dvc_yaml_text())
