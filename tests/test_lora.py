"""LoRA (PEFT) for SFT and UniGRPO: the adapters, the merge, the reference policy, and both stages end to end.

Merging is checked against the hand formula ``W + (alpha / r) · B @ A`` and against the adapted model's
own outputs; the UniGRPO reference (adapters off) against the base checkpoint loaded separately; the
stages on CPU with curated shards, Lightning and an MLflow SQLite store.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from peft import PeftModel
from safetensors.torch import load_file

from mmada.errors import ConfigError
from mmada.models import MMaDAConfig, MMaDAModelLM
from mmada.rl import per_token_logps
from mmada.tokenization import SpecialTokenIds, load_text_tokenizer
from mmada.training import load_train_config, train
from mmada.training.grpo import GRPOModule
from mmada.training.lora import LoRASpec, adapters_disabled, add_lora, merged_state_dict, save_adapter
from mmada.training.run import export_checkpoint
from tests.test_training_support import (
    TINY_OVERRIDES,
    curated_data,
    fresh_mlflow_uri,
    one_thread,
    tiny_config,
)

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)
TARGETS = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")


def tiny_model(seed: int = 0) -> MMaDAModelLM:
    torch.manual_seed(seed)
    return MMaDAModelLM(MMaDAConfig.from_preset("tiny", **TINY_OVERRIDES)).eval()


def randomise_adapters(model, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at 0: give the adapters an effect
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return curated_data(tmp_path_factory)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("lora-base")
    tiny_model().save_pretrained(d)
    load_text_tokenizer("builtin").save_pretrained(d)
    return d


def test_adapters_merge_and_switch_off(tmp_path):
    base = tiny_model()
    ids = torch.randint(17, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    base_logits = base(ids).logits.detach()
    spec = LoRASpec(r=4, alpha=8, dropout=0.0)
    model = add_lora(tiny_model(), spec)
    assert torch.equal(model(ids).logits, base_logits)  # B = 0: an identity update
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".")[4] for n in trainable} == set(TARGETS)  # model.transformer.blocks.0.<proj>.lora_…
    assert "model.transformer.ff_out.weight" in model.state_dict()  # the LM head is not adapted

    randomise_adapters(model)
    adapted = model(ids).logits.detach()
    assert not torch.allclose(adapted, base_logits)
    with adapters_disabled(model):
        assert torch.equal(model(ids).logits, base_logits)
    assert torch.equal(model(ids).logits, adapted)  # switched back on

    state = model.state_dict()
    merged = merged_state_dict(state, spec.scaling)
    assert merged.keys() == base.state_dict().keys()
    key = "model.transformer.blocks.0.q_proj"
    A, B, W = state[f"{key}.lora_A.default.weight"], state[f"{key}.lora_B.default.weight"], \
        state[f"{key}.base_layer.weight"]
    hand = W.double() + (8 / 4) * torch.einsum("or,ri->oi", B.double(), A.double())
    torch.testing.assert_close(merged[f"{key}.weight"].double(), hand, rtol=0, atol=1e-6)
    assert torch.equal(merged["model.transformer.wte.weight"], state["model.transformer.wte.weight"])
    plain = tiny_model()
    plain.load_state_dict(merged)
    torch.testing.assert_close(plain(ids).logits, adapted, rtol=1e-4, atol=1e-5)

    # the saved adapter is PEFT's layout: PeftModel loads it onto the base model with the same outputs
    save_adapter(state, spec, tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(tiny_model(), str(tmp_path / "adapter")).eval()
    torch.testing.assert_close(peft_model(ids).logits, adapted, rtol=1e-5, atol=1e-6)


def test_lora_config_rules(data, tmp_path):
    def cfg(**kw):
        return load_train_config(tiny_config(data, tmp_path, "sqlite:///x.db", **kw))

    assert cfg(stage="sft", lora={}).lora == LoRASpec(r=128, alpha=64, dropout=0.05)  # d1's values
    with pytest.raises(ConfigError, match="lora: adapters are for stages sft and grpo"):
        cfg(lora={})
    with pytest.raises(ConfigError, match="target_modules"):
        cfg(stage="sft", lora={"target_modules": ["lm_head"]})


def test_grpo_reference_log_probs_are_the_base_model_s(data, base_dir, tmp_path):
    """With LoRA the reference policy is the adapted policy with its adapters off: the base model."""
    cfg = tiny_config(data, tmp_path, "sqlite:///unused.db", stage="sft")
    cfg.update(stage="grpo", model={"init": str(base_dir)}, lora={"r": 8, "alpha": 16},
               grpo={"beta": 0.04, "reward_funcs": ["format"], "reward_weights": {}})
    config = load_train_config(cfg)
    tok = load_text_tokenizer(str(base_dir))
    module = GRPOModule(config, model_config=MMaDAConfig.from_pretrained(base_dir),
                        special=SpecialTokenIds.from_tokenizer(tok), init_dir=base_dir)
    module.configure_model()
    module.model.eval()
    randomise_adapters(module.model)  # as after some updates
    ids = torch.randint(17, 1000, (3, 12), generator=torch.Generator().manual_seed(2))
    noisy = ids.clone()
    noisy[:, 6:] = 2  # the mask token on the "completion"
    ref = per_token_logps(module._ref(), noisy, ids)
    base = per_token_logps(MMaDAModelLM.from_pretrained(base_dir).eval(), noisy, ids)
    assert torch.equal(ref, base)
    assert not torch.allclose(per_token_logps(module.model, noisy, ids), base)
    assert sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in module.model.parameters())


def test_lora_sft_then_lora_grpo_register_merged_versions(data, base_dir, tmp_path_factory, tmp_path):
    uri = fresh_mlflow_uri(tmp_path_factory, tmp_path)
    lora = {"r": 8, "alpha": 16, "dropout": 0.0}
    sft_cfg = tiny_config(data, tmp_path / "sft", uri, stage="sft", steps=3, lora=lora,
                          model={"preset": None, "overrides": {}, "init": str(base_dir)})
    sft = train(load_train_config(sft_cfg))
    client = MlflowClient(uri)
    assert sft.model_version == "1"
    assert {a.path for a in client.list_artifacts(sft.run_id, "adapter")} == \
        {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"}
    base = load_file(str(base_dir / "model.safetensors"))
    merged = load_file(str(sft.export_dir / "model.safetensors"))
    assert merged.keys() == base.keys()  # a normal checkpoint: official names, no adapter keys
    for k in base:
        adapted = any(f".{t}.weight" in k for t in TARGETS) and ".blocks." in k
        assert torch.equal(merged[k], base[k]) != adapted, k  # only the adapted projections moved
    model = MMaDAModelLM.from_pretrained(sft.export_dir)  # loads as any version
    assert model.config.vocab_size == 2048
    # exporting a step checkpoint of a LoRA run merges too (here the last one: the same weights)
    again = export_checkpoint(load_train_config(sft_cfg), sft.checkpoint_dir / "last.ckpt", tmp_path / "again")
    assert all(torch.equal(v, merged[k]) for k, v in load_file(str(again / "model.safetensors")).items())

    grpo_cfg = tiny_config(data, tmp_path / "grpo", uri, stage="sft", steps=2)
    grpo_cfg.update(stage="grpo", model={"init": "models:/mmada-test@sft"}, lora=lora,
                    grpo={"num_generations": 2, "beta": 0.04, "think": True, "reward_funcs": ["format"],
                          "reward_weights": {}, "sampler": {"steps": 4, "gen_length": 8, "block_length": 8,
                                                            "temperature": 1.0}})
    grpo_cfg["data"] = {**grpo_cfg["data"], "streams": {"chat": {"manifests": [data["arithmetic"]], "batch_size": 2,
                                                                 "max_text_len": 160}}}
    grpo = train(load_train_config(grpo_cfg))
    assert grpo.model_version == "2" and grpo.global_step == 2
    mv = client.get_model_version_by_alias("mmada-test", "grpo")
    assert str(mv.version) == "2" and mv.tags["parent_model_version"] == "mmada-test/1"
    assert '"r": 8' in mv.tags["lora"]
    assert "adapter/adapter_model.safetensors" in {a.path for a in client.list_artifacts(grpo.run_id, "adapter")}
    run = client.get_run(grpo.run_id)
    assert "chat/kl" in run.data.metrics  # beta > 0: the reference (adapters off) was evaluated
    after = load_file(str(grpo.export_dir / "model.safetensors"))
    assert torch.equal(after["model.transformer.wte.weight"], merged["model.transformer.wte.weight"])
