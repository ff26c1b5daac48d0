"""MMaDA from LLaDA: grow a LLaDA-shaped checkpoint's vocabulary, train, register, sample text and an image.

The checkpoint is made here with LLaDA's layout (``model_type: llada``, 126464 text rows, the official
special ids, LLaDA's 126349-entry tokenizer in the same directory) and a small hidden size; the path is
the one ``configs/train/8b_from_llada.yaml`` takes for LLaDA-8B-Instruct.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.errors import ConfigError
from mmada.eval.runners import MagvitCodec, generate_images
from mmada.inference import generate_answers, load_checkpoint
from mmada.models import LLaDAConfig, LLaDAModelLM, MMaDAConfig, MMaDAModelLM
from mmada.models.from_llada import grow_from_llada, mmada_config_from_llada
from mmada.training import load_train_config, train
from tests.llada_layout import LLADA_LLM_VOCAB, llada_tokenizer_dir
from tests.test_training_support import curated_data, fresh_mlflow_uri, one_thread, tiny_config

REPO = Path(__file__).resolve().parents[1]
_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)
GROWN = LLADA_LLM_VOCAB + 1024  # 127488 rows, a multiple of 128 like the official 134656


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return curated_data(tmp_path_factory)


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory) -> Path:
    """A LLaDA-shaped checkpoint: official config fields and ids, LLaDA's tokenizer, d_model 64, one layer."""
    d = tmp_path_factory.mktemp("LLaDA-tiny-Instruct")
    cfg = LLaDAConfig(d_model=64, n_layers=1, n_heads=2, n_kv_heads=2, mlp_hidden_size=128, vocab_size=LLADA_LLM_VOCAB,
                      embedding_size=LLADA_LLM_VOCAB, mask_token_id=126336, bos_token_id=126080, eos_token_id=126081,
                      pad_token_id=126081, max_sequence_length=4096, rope_theta=500000.0)
    torch.manual_seed(0)
    LLaDAModelLM(cfg).save_pretrained(d)
    llada_tokenizer_dir(d)  # tokenizer.json etc. next to the weights, as in the HF repo
    saved = json.loads((d / "config.json").read_text())
    assert saved["model_type"] == "llada" and saved["vocab_size"] == 126464 and saved["codebook_size"] == 0
    return d


def test_grow_keeps_llada_rows_and_initialises_new_rows_with_their_mean(llada_dir):
    llada = MMaDAModelLM.from_pretrained(llada_dir)
    old_wte = llada.get_input_embeddings().weight.detach().clone()
    old_head = llada.get_output_embeddings().weight.detach().clone()
    ids = torch.tensor([[126080, 17, 42, 126081, 126336, 126336]])
    old_logits = llada(ids).logits.detach()
    target = mmada_config_from_llada(MMaDAConfig.from_pretrained(llada_dir), vocab_size=GROWN, codebook_size=1024,
                                     num_vq_tokens=64)
    model = grow_from_llada(llada, target)
    c = model.config
    assert (c.vocab_size, c.embedding_size, c.llm_vocab_size, c.codebook_size, c.num_vq_tokens, c.mask_token_id) == \
        (GROWN, GROWN, 126464, 1024, 64, 126336)
    wte, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert wte.shape == head.shape == (GROWN, 64)
    assert torch.equal(wte[:126464], old_wte) and torch.equal(head[:126464], old_head)
    # every new row is the mean of LLaDA's rows (hand: the column means in float64)
    for new, old in ((wte, old_wte), (head, old_head)):
        mean = old.double().sum(0) / old.shape[0]
        torch.testing.assert_close(new[126464:].double(), mean.expand(1024, -1), rtol=0, atol=1e-6)
    # text logits over LLaDA's vocabulary are LLaDA's
    assert torch.equal(model(ids).logits[..., :126464].detach(), old_logits)
    with pytest.raises(ConfigError, match="already has codebook_size=1024"):
        mmada_config_from_llada(target, vocab_size=GROWN, codebook_size=1024, num_vq_tokens=64)
    with pytest.raises(ConfigError, match=r"model.from_llada.vocab_size=127000 < the checkpoint's 126464 text rows"):
        mmada_config_from_llada(MMaDAConfig.from_pretrained(llada_dir), vocab_size=127000, codebook_size=1024,
                                num_vq_tokens=64)


def test_the_8b_from_llada_config_validates():
    cfg = load_train_config(REPO / "configs/train/8b_from_llada.yaml")
    spec = cfg.model.from_llada
    assert (spec.vocab_size, spec.codebook_size, spec.num_vq_tokens, spec.mask_token_id) == (134656, 8192, 256, 126336)
    assert cfg.stage == "pretrain" and cfg.model.init and cfg.data.image_resolution == 256
    llada_8b = MMaDAConfig(d_model=4096, n_layers=32, n_heads=32, mlp_hidden_size=12288, vocab_size=126464)
    grown = mmada_config_from_llada(llada_8b, **spec.model_dump())
    assert (grown.vocab_size, grown.llm_vocab_size, grown.codebook_size) == (134656, 126464, 8192)
    with pytest.raises(ConfigError, match=r"model\.from_llada grows the checkpoint named by model\.init"):
        load_train_config({**cfg.model_dump(mode="json"), "model": {"preset": "tiny", "from_llada": {}}})


def test_from_llada_end_to_end(data, llada_dir, tmp_path_factory, tmp_path):
    """Resize, train a few steps, register, then sample text and an image from the registered export."""
    uri = fresh_mlflow_uri(tmp_path_factory, tmp_path)
    streams = {"t2i": {"manifests": [data["shapes_codes"]], "batch_size": 2, "max_text_len": 16},
               "lm": {"manifests": [data["arithmetic"]], "batch_size": 1, "max_text_len": 96},
               "mmu": {"manifests": [data["shapes"]], "batch_size": 1, "max_text_len": 48}}
    cfg = tiny_config(data, tmp_path / "from-llada", uri, steps=3,
                      model={"preset": None, "overrides": {}, "init": str(llada_dir),
                             "from_llada": {"vocab_size": GROWN, "codebook_size": 1024, "num_vq_tokens": 64}},
                      data={"streams": streams, "val_batches": 0},
                      tracking={"registered_model": "mmada-from-llada"})
    result = train(load_train_config(cfg))
    assert result.global_step == 3 and result.model_version == "1"
    mv = MlflowClient(uri).get_model_version_by_alias("mmada-from-llada", "pretrain")
    assert str(mv.version) == "1" and mv.tags["init"] == str(llada_dir)

    saved = json.loads((result.export_dir / "config.json").read_text())
    assert saved["model_type"] == "mmada" and "auto_map" not in saved
    assert (saved["vocab_size"], saved["embedding_size"], saved["llm_vocab_size"], saved["codebook_size"],
            saved["num_vq_tokens"], saved["mask_token_id"]) == (GROWN, GROWN, 126464, 1024, 64, 126336)
    weights = load_file(str(result.export_dir / "model.safetensors"))
    assert weights["model.transformer.wte.weight"].shape == (GROWN, 64)
    llada = load_file(str(llada_dir / "model.safetensors"))
    moved = weights["model.transformer.blocks.0.q_proj.weight"] - llada["model.transformer.blocks.0.q_proj.weight"]
    assert moved.abs().max() > 0  # trained from LLaDA's weights (three steps moved them a little)
    assert moved.abs().max() < 0.1

    lm = load_checkpoint(result.export_dir, device="cpu")
    assert lm.builder.special.image_offset == 126349 and len(lm.tokenizer) == 126349
    answers = generate_answers(lm, ["What is 2 + 3?"], SamplerSettings(steps=4, gen_length=8, block_length=4))
    assert len(answers) == 1 and isinstance(answers[0], str)
    image = generate_images(lm, MagvitCodec(data["vq"], resolution=32), ["a red circle"],
                            ImageSamplerSettings(steps=3))[0]
    image.save(tmp_path / "a-red-circle.png")
    assert image.size == (32, 32) and (tmp_path / "a-red-circle.png").stat().st_size > 0
