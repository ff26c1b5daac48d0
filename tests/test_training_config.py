"""Stage configs, overrides and their errors; the optimizer rules; the parallelism policies (CPU, unit level).

FSDP2 runs in tests/test_training_fsdp.py (two gloo processes) and ``test_fsdp_training_on_gpu``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import get_args

import pytest
import torch
from torch import nn

from mmada.errors import ConfigError
from mmada.models import MMaDAConfig, MMaDAModelLM
from mmada.training.config import STAGE_COEFFS, Stage, load_train_config
from mmada.training.optim import build_optimizer, build_scheduler, lr_factor, param_groups
from mmada.training.parallelize import apply_activation_checkpointing, build_strategy
from mmada.training.trainer import resolve_precision
from tests.test_training_support import TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs" / "train").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_stage_configs_validate(path):
    cfg = load_train_config(path)
    assert cfg.stage in get_args(Stage)
    assert set(cfg.coeffs) == set(cfg.data.streams)
    if cfg.trainer.strategy == "fsdp":
        assert cfg.trainer.num_nodes >= 1 and cfg.trainer.devices != "auto"


def test_stage_configs_cover_sizes_and_stages():
    names = {p.stem for p in CONFIGS}
    assert {"tiny_pretrain", "tiny_sft", "small_pretrain", "small_sft", "8b_pretrain", "8b_sft"} <= names
    sft = load_train_config(REPO / "configs/train/tiny_sft.yaml")
    assert sft.model.init == "models:/mmada-tiny@pretrain" and sft.alias == "sft"
    big = load_train_config(REPO / "configs/train/8b_sft.yaml")
    assert big.trainer.strategy == "fsdp" and big.trainer.precision == "bf16-mixed" and big.trainer.devices == 8


def test_overrides_and_errors_name_the_field():
    path = REPO / "configs/train/tiny_pretrain.yaml"
    cfg = load_train_config(path, ["optim.lr=3e-4", "data.streams.t2i.batch_size=2", "trainer.devices=2",
                                   "loss.coeffs={t2i: 1.0, lm: 0.5, mmu: 0.25}", "samples.prompts=[hi]"])
    assert cfg.optim.lr == 3e-4 and cfg.data.streams["t2i"].batch_size == 2 and cfg.trainer.devices == 2
    assert cfg.coeffs == {"t2i": 1.0, "lm": 0.5, "mmu": 0.25} and cfg.samples.prompts == ["hi"]
    assert load_train_config(path).coeffs == {**STAGE_COEFFS["pretrain"], "lm": 1.0}  # tiny: text from scratch
    cases = {
        "optim.lr=-1": r"optim\.lr: Input should be greater than 0",
        "trainer.precision=fp8": r"trainer\.precision: Input should be",
        "optim.lrr=1": r"optim\.lrr: unknown field",
        "data.streams.chat.manifests=[x]": r"data\.streams: stage 'pretrain' trains",
        "loss.coeffs={t2i: 1.0}": r"loss\.coeffs: no coefficient for the stream\(s\) \['lm', 'mmu'\]",
        "model.init=models:/x@y": r"set exactly one of model\.preset",
        "data.streams.t2i.batch_size=0": r"data\.streams\.t2i\.batch_size: Input should be greater than or equal to 1",
        "optim.lr": r"expected KEY=VALUE",
        "optim.lr.x=1": r"optim\.lr is a value, not a section",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_train_config(path, [override])
    with pytest.raises(ConfigError, match="does not exist"):
        load_train_config(REPO / "configs/train/nope.yaml")


def test_config_hash_tracks_what_changes_the_result():
    path = REPO / "configs/train/tiny_pretrain.yaml"
    base = load_train_config(path).config_hash()
    assert load_train_config(path, ["tracking.uri=sqlite:///elsewhere.db", "checkpoint.resume=never"]).config_hash() == base
    assert load_train_config(path, ["optim.lr=1e-5"]).config_hash() != base
    assert load_train_config(path).flat()["optim.lr"] == str(load_train_config(path).optim.lr)


def test_cli_reports_config_errors(capsys):
    from mmada.cli import main

    rc = main(["train", str(REPO / "configs/train/tiny_pretrain.yaml"), "--set", "optim.lr=0"])
    assert rc == 2 and "optim.lr: Input should be greater than 0" in capsys.readouterr().err
    assert main(["train", str(REPO / "configs/train/tiny_sft.yaml"), "--print-config"]) == 0
    assert '"stage": "sft"' in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- optim


def test_no_decay_rule_and_groups():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4, bias=True)
            self.layer_norm = nn.LayerNorm(4)
            self.frozen = nn.Parameter(torch.zeros(2), requires_grad=False)

    toy = Toy()
    groups = param_groups(toy.named_parameters(), 0.01, ["bias", "layer_norm.weight"])
    names = {id(p): n for n, p in toy.named_parameters()}
    assert [sorted(names[id(p)] for p in g["params"]) for g in groups] == [
        ["proj.weight"], ["layer_norm.bias", "layer_norm.weight", "proj.bias"]]  # frozen: in no group
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    # The reference patterns match no official MMaDA parameter name: everything is decayed.
    model = MMaDAModelLM(MMaDAConfig.from_preset("tiny", **TINY_OVERRIDES))
    opt = build_optimizer(model, load_train_config(REPO / "configs/train/tiny_pretrain.yaml").optim)
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == len(list(model.parameters()))


def test_cosine_schedule_with_warmup_values():
    kw = dict(warmup=4, max_steps=14, min_lr_scale=0.1)
    assert [lr_factor(s, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(9, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(14, **kw) == pytest.approx(0.1) and lr_factor(100, **kw) == pytest.approx(0.1)
    assert lr_factor(10, kind="constant", **kw) == 1.0
    cfg = load_train_config(REPO / "configs/train/tiny_pretrain.yaml", ["optim.lr=1.0", "optim.warmup_steps=4",
                                                                         "optim.min_lr_scale=0.1"])
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(opt, cfg.optim, max_steps=14)
    seen = []
    for _ in range(14):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_factor(s, **kw) for s in range(14)])


# ---------------------------------------------------------------------------------------------- parallelism


def test_ddp_strategy_and_precision_choices():
    from lightning.pytorch.strategies import DDPStrategy

    cfg = load_train_config(REPO / "configs/train/tiny_pretrain.yaml", ["trainer.num_nodes=2"])
    s = build_strategy(cfg.trainer, "cpu")
    assert isinstance(s, DDPStrategy) and s._process_group_backend == "gloo"
    assert build_strategy(load_train_config(REPO / "configs/train/tiny_pretrain.yaml").trainer, "cpu") == "auto"
    assert resolve_precision("auto", "gpu") == "bf16-mixed" and resolve_precision("auto", "cpu") == "32-true"


def test_activation_checkpointing_keeps_gradients():
    cfg = MMaDAConfig.from_preset("tiny", **{**TINY_OVERRIDES, "n_layers": 2})
    torch.manual_seed(0)
    plain = MMaDAModelLM(cfg)
    ckpt = MMaDAModelLM(cfg)
    ckpt.load_state_dict(plain.state_dict())
    assert apply_activation_checkpointing(ckpt) == 2
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    assert sum(isinstance(m, CheckpointWrapper) for m in ckpt.modules()) == 2
    assert set(ckpt.state_dict()) == set(plain.state_dict())  # checkpoints keep the official names
    x = torch.randint(0, cfg.vocab_size, (2, 12))
    for m in (plain, ckpt):
        m(x).logits.float().pow(2).mean().backward()
    for (n, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=n)


def test_compiled_blocks_compute_what_eager_blocks_do():
    """trainer.compile: each block compiled in place (regional), names and numerics unchanged."""
    from mmada.training.parallelize import parallelize
    from mmada.training.specs import TrainerSpec

    cfg = MMaDAConfig.from_preset("tiny", **{**TINY_OVERRIDES, "n_layers": 2})
    torch.manual_seed(0)
    eager = MMaDAModelLM(cfg)
    compiled = MMaDAModelLM(cfg)
    compiled.load_state_dict(eager.state_dict())
    parallelize(compiled, TrainerSpec(compile=True, activation_checkpointing=True))
    blocks = compiled.model.transformer.blocks
    assert all(b._compiled_call_impl is not None for b in blocks)  # the blocks, not the whole model
    assert compiled._compiled_call_impl is None
    assert set(compiled.state_dict()) == set(eager.state_dict())  # no _orig_mod. prefixes
    x = torch.randint(0, cfg.vocab_size, (2, 12))
    for m in (eager, compiled):
        m(x).logits.float().pow(2).mean().backward()
    torch.testing.assert_close(compiled(x).logits, eager(x).logits, atol=1e-5, rtol=1e-4)
    for (n, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=n)
