"""The `mmada` command: generate / t2i on a checkpoint directory, and bad input."""

import json

import pytest
import torch

from mmada.cli import main
from mmada.diffusion import generate_text
from mmada.diffusion.settings import SamplerSettings
from mmada.inference import load_checkpoint
from mmada.models import MMaDAConfig, MMaDAModelLM
from mmada.tokenization import load_text_tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = MMaDAModelLM(MMaDAConfig.from_preset("tiny", n_layers=1, d_model=64, n_heads=2, n_kv_heads=2, mlp_hidden_size=128,
                                                 num_vq_tokens=16))
    model.save_pretrained(d)
    load_text_tokenizer("builtin").save_pretrained(d)
    return d


def test_generate_prints_answers(checkpoint, capsys):
    rc = main(["generate", str(checkpoint), "--prompt", "What is 2+3?", "--prompt", "How many apples?",
               "--steps", "8", "--gen-length", "8", "--block-length", "4", "--json", "--device", "cpu"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["prompt"] for o in out] == ["What is 2+3?", "How many apples?"]
    assert all(isinstance(o["answer"], str) for o in out)


def test_t2i_prints_codes(checkpoint, capsys):
    rc = main(["t2i", str(checkpoint), "--prompt", "a red circle", "--steps", "4", "--guidance-scale", "1.5"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out[0]["codes"]) == 16 and all(0 <= c < 1024 for c in out[0]["codes"])


def test_bad_input_exits_2_with_message(checkpoint, tmp_path, capsys):
    rc = main(["generate", str(checkpoint), "--prompt", "x", "--gen-length", "10", "--block-length", "4"])
    assert rc == 2 and "gen_length=10 is not divisible by block_length=4" in capsys.readouterr().err
    (tmp_path / "config.json").write_text((checkpoint / "config.json").read_text())
    rc = main(["generate", str(tmp_path), "--prompt", "x"])
    assert rc == 2 and "no tokenizer.json" in capsys.readouterr().err
    rc = main(["generate", str(tmp_path / "nope"), "--prompt", "x", "--tokenizer", "builtin"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = main(["generate", "no-such-org/no-such-model", "--prompt", "x", "--tokenizer", "builtin"])
    assert rc == 2 and "cannot load checkpoint 'no-such-org/no-such-model'" in capsys.readouterr().err


def test_tokenizer_checkpoint_mismatch_is_reported(checkpoint, tmp_path, capsys):
    cfg = json.loads((checkpoint / "config.json").read_text())
    model = MMaDAModelLM(MMaDAConfig.from_preset("tiny", n_layers=1, d_model=64, n_heads=2, n_kv_heads=2, mlp_hidden_size=128,
                                                 llm_vocab_size=1000, vocab_size=2048))
    model.save_pretrained(tmp_path)
    load_text_tokenizer("builtin").save_pretrained(tmp_path)
    assert cfg["llm_vocab_size"] == 1024
    rc = main(["generate", str(tmp_path), "--prompt", "x"])
    assert rc == 2 and "llm_vocab_size is 1000" in capsys.readouterr().err


def test_llada_eos_flags_reach_the_sampler(checkpoint, capsys):
    """--logits-eos-inf / --confidence-eos-eot-inf are generated from SamplerSettings' fields."""
    rc = main(["generate", str(checkpoint), "--prompt", "What is 2+3?", "--steps", "8", "--gen-length", "8",
               "--block-length", "4", "--json", "--device", "cpu", "--logits-eos-inf", "--confidence-eos-eot-inf"])
    assert rc == 0
    assert isinstance(json.loads(capsys.readouterr().out)[0]["answer"], str)
    lm = load_checkpoint(checkpoint, device="cpu")
    batch = lm.builder.chat(["What is 2+3?"])
    out = generate_text(lm.model, batch.input_ids, SamplerSettings(steps=8, gen_length=8, block_length=4,
                                                                   logits_eos_inf=True),
                        attention_mask=batch.attention_mask, eos_id=lm.builder.special.eos)
    assert not (out[:, batch.input_ids.shape[1]:] == lm.builder.special.eos).any()
