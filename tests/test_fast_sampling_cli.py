"""Fast-sampling options through the settings object, ``generate_answers`` and the ``mmada`` CLI."""

import json

import pytest
import torch

from mmada.cli import main
from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.errors import SamplerError
from mmada.inference import generate_answers, generate_image_codes, load_checkpoint
from mmada.models import MMaDAConfig, MMaDAModelLM
from mmada.tokenization import load_text_tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 1-layer checkpoint with the built-in tokenizer: its KV caches are exact (nothing goes stale)."""
    d = tmp_path_factory.mktemp("ckpt1")
    torch.manual_seed(0)
    model = MMaDAModelLM(MMaDAConfig.from_preset("tiny", n_layers=1, d_model=64, n_heads=2, n_kv_heads=2,
                                                 mlp_hidden_size=128, num_vq_tokens=16, initializer_range=0.3))
    model.save_pretrained(d)
    load_text_tokenizer("builtin").save_pretrained(d)
    return d


def test_settings_validate_and_record():
    s = SamplerSettings(gen_length=256, block_length=32, steps=256, cache="prefix", threshold=0.9)
    assert s.describe() == "gen256/blk32/steps256 cache=prefix threshold=0.9"
    rec = s.record()
    assert rec["sampler.cache"] == "prefix" and rec["sampler.threshold"] == 0.9 and rec["sampler.block_length"] == 32
    assert set(rec) == {f"sampler.{k}" for k in SamplerSettings.model_fields}
    for kw, msg in [
        (dict(gen_length=10, block_length=4), "gen_length=10 is not divisible by block_length=4"),
        (dict(threshold=0.9, factor=1.0), "threshold and factor are exclusive"),
        (dict(cache="full"), "cache: Input should be 'none', 'prefix' or 'dual'"),
        (dict(threshold=-1), r"threshold: Input should be greater than 0 \(got -1\)"),
        (dict(prompt_cache="once"), "prompt_cache='once' needs cache"),
    ]:
        with pytest.raises(SamplerError, match=msg):
            SamplerSettings.make(**kw)
    with pytest.raises(SamplerError, match="unknown mask schedule 'cube'"):
        ImageSamplerSettings.make(schedule="cube")
    assert ImageSamplerSettings(cache="prefix", guidance_scale=2).describe() == "maskgit steps12 cfg2 cache=prefix"


def test_generate_answers_cache_is_exact_on_a_one_layer_checkpoint(checkpoint):
    lm = load_checkpoint(checkpoint, device="cpu")
    prompts = ["What is 2+3?", "Ann has 4 apples. How many now?", "x"]  # mixed lengths: left padding
    base = SamplerSettings(steps=16, gen_length=16, block_length=8)
    plain = generate_answers(lm, prompts, base)
    for opts in ({"cache": "prefix"}, {"cache": "dual", "prompt_cache": "once"}):
        assert generate_answers(lm, prompts, base.model_copy(update=opts)) == plain
    fast = generate_answers(lm, prompts, base.model_copy(update={"cache": "prefix", "threshold": 0.5}))
    assert len(fast) == 3 and all(isinstance(a, str) for a in fast)
    codes = [generate_image_codes(lm, ["a red circle", "a square"],
                                  ImageSamplerSettings(steps=4, guidance_scale=1.5, cache=c, seed=3))
             for c in ("none", "prefix")]
    assert torch.equal(codes[0], codes[1])


def test_cli_fast_options(checkpoint, capsys):
    rc = main(["generate", str(checkpoint), "--prompt", "What is 2+3?", "--prompt", "How many apples?",
               "--steps", "16", "--gen-length", "16", "--block-length", "8", "--json", "--device", "cpu",
               "--cache", "prefix", "--threshold", "0.9", "--stop-at-eos"])
    assert rc == 0
    cap = capsys.readouterr()
    assert "sampler: gen16/blk8/steps16 cache=prefix threshold=0.9 stop_at_eos" in cap.err
    assert [o["prompt"] for o in json.loads(cap.out)] == ["What is 2+3?", "How many apples?"]
    rc = main(["generate", str(checkpoint), "--prompt", "x", "--threshold", "0.9", "--factor", "1"])
    assert rc == 2 and "threshold and factor are exclusive" in capsys.readouterr().err
    rc = main(["generate", str(checkpoint), "--prompt", "x", "--prompt-cache", "once"])
    assert rc == 2 and "prompt_cache='once' needs cache" in capsys.readouterr().err
    rc = main(["t2i", str(checkpoint), "--prompt", "a red circle", "--steps", "4", "--guidance-scale", "1.5",
               "--cache", "prefix"])
    cap = capsys.readouterr()
    assert rc == 0 and "cache=prefix" in cap.err and len(json.loads(cap.out)[0]["codes"]) == 16
