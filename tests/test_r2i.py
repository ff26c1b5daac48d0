"""Reasoning to image (``<|r2i|>``): the layout, its loss, training rows, the two-step sampler and ``mmada t2i --think``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmada.cli import main
from mmada.diffusion import generate_text, unified_loss
from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.errors import ConfigError
from mmada.inference import LoadedModel, generate_r2i
from mmada.models import MMaDAConfig, MMaDAModelLM
from mmada.models.vq import MAGVITv2
from mmada.tokenization import R2I_PREFIX, SequenceBuilder, left_pad, load_text_tokenizer
from mmada.training.vq import TINY_MODEL
from tests.llada_layout import llada_tokenizer_dir

CAPTIONS = ["a red circle", "a blue square"]
TRACES = ["one big red circle in the middle", "two small blue squares at the top"]


@pytest.fixture(scope="module")
def tok():
    return load_text_tokenizer("builtin")


def tiny(num_vq_tokens: int = 16, seed: int = 0) -> MMaDAModelLM:
    torch.manual_seed(seed)
    return MMaDAModelLM(MMaDAConfig.from_preset("tiny", n_layers=2, d_model=128, n_heads=4, n_kv_heads=4,
                                                mlp_hidden_size=256, num_vq_tokens=num_vq_tokens))


def test_r2i_layout_with_the_official_ids(tmp_path):
    tok = load_text_tokenizer(str(llada_tokenizer_dir(tmp_path / "llada-tok")))
    sb = SequenceBuilder(tok)
    codes = torch.tensor([[0, 5, 8191]])
    rows = sb.r2i(["a red circle"], ["one big red circle"], codes, max_text_len=160)
    ids, pm = rows.input_ids[0].tolist(), rows.prompt_mask[0].tolist()
    prompt = sb.r2i_prompt("a red circle")
    answer = sb.encode("<think>one big red circle</think>")
    T = 160
    assert len(ids) == 1 + T + 1 + 3 + 1
    assert ids[0] == 126094 and ids[1:len(prompt)] == prompt[1:] and prompt[1] == 126080  # <|r2i|> <bos> …
    assert R2I_PREFIX.strip() in tok.decode(prompt) and tok.decode(prompt).endswith(
        "<|start_header_id|>assistant<|end_header_id|>\n")
    n = len(prompt)
    assert ids[n:n + len(answer)] == answer and set(ids[n + len(answer):1 + T]) == {126081}  # EOS fill
    assert ids[1 + T:] == [126084, 126349, 126354, 134540, 126085]  # <|soi|> 126349 + c … <|eoi|>
    # prompt: the task token, the chat prompt, <|soi|> and <|eoi|>; the trace, its fill and the image are targets
    assert pm == [True] * n + [False] * (1 + T - n) + [True] + [False] * 3 + [True]
    assert rows.image_mask[0].nonzero().flatten().tolist() == [T + 2, T + 3, T + 4]
    assert rows.attention_mask.all()


def test_r2i_rows_train(tok):
    """The r2i loss is the SFT loss over everything after the prompt (trace, fill, image), and it falls."""
    sb = SequenceBuilder(tok)
    codes = torch.randint(0, 1024, (2, 16), generator=torch.Generator().manual_seed(3))
    rows = sb.r2i(CAPTIONS, TRACES, codes, max_text_len=128)
    model = tiny()
    a = unified_loss(model, {"r2i": rows}, mask_id=2, generator=torch.Generator().manual_seed(0))
    b = unified_loss(model, {"chat": rows}, mask_id=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.loss, b.loss) and a.num_masked["r2i"] > 0
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(60):
        out = unified_loss(model, {"r2i": rows}, mask_id=2, generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10, losses


class Recorder(torch.nn.Module):
    """The model, recording every input it is called with."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.calls = model, model.config, []

    def forward(self, input_ids, attention_mask=None, **kw):
        self.calls.append(input_ids.clone())
        return self.model(input_ids, attention_mask=attention_mask, **kw)


def test_generate_r2i_conditions_the_image_on_the_generated_description(tok):
    sb = SequenceBuilder(tok)
    model = tiny().eval()
    rec = Recorder(model)
    text = SamplerSettings(steps=8, gen_length=8, block_length=8, logits_eos_inf=True)  # a full-length answer
    res = generate_r2i(LoadedModel(rec, tok, sb), CAPTIONS, text, ImageSamplerSettings(steps=3, guidance_scale=1.5))
    assert res.codes.shape == (2, 16) and len(res.traces) == 2
    # the description, recomputed with the text sampler on the r2i prompts
    prompts = [sb.r2i_prompt(c) for c in CAPTIONS]
    ids, attn = left_pad(prompts, sb.special.eos)
    assert all(torch.equal(c[:, : ids.shape[1]], ids) for c in rec.calls[:8])  # the text steps see the prompt
    gen = generate_text(model, ids, text, attention_mask=attn, mask_id=2, eos_id=1, eot_id=5,
                        generator=text.generator())[:, ids.shape[1]:]
    assert res.answers == tok.batch_decode(gen, skip_special_tokens=True)
    # the MaskGIT steps (cond + uncond rows) see <|r2i|> prompt description <eos>… <|soi|> image <|eoi|>
    image_calls = rec.calls[8:]
    T = max(len(p) for p in prompts) - 1 + 8 + 1
    cond = image_calls[0][:2]
    for i, p in enumerate(prompts):
        row = cond[i].tolist()
        assert row[: len(p)] == p and row[len(p) : len(p) + 8] == gen[i].tolist()
        assert set(row[len(p) + 8 : 1 + T]) == {1} and row[1 + T] == sb.special.soi and row[-1] == sb.special.eoi
    assert len(image_calls) == 3 and all(c.shape == (4, 1 + T + 1 + 16 + 1) for c in image_calls)
    for row in image_calls[0][2:].tolist():  # guidance: the same layout without any text
        assert row[:2] == [sb.special.r2i, sb.special.bos] and set(row[2 : 1 + T]) == {sb.special.eos}


def test_t2i_think_prints_the_trace_and_writes_the_image(tok, tmp_path, capsys):
    ckpt, vq = tmp_path / "ckpt", tmp_path / "vq"
    tiny(num_vq_tokens=64).save_pretrained(ckpt)
    tok.save_pretrained(str(ckpt))
    torch.manual_seed(0)
    MAGVITv2(TINY_MODEL).save_pretrained(vq)
    args = ["t2i", str(ckpt), "--prompt", "a red circle", "--think", "--think-gen-length", "8", "--think-steps", "8",
            "--think-block-length", "8", "--think-logits-eos-inf", "--steps", "2", "--device", "cpu",
            "--image-tokenizer", str(vq), "--save", str(tmp_path / "out")]
    assert main(args) == 0
    captured = capsys.readouterr()
    row = json.loads(captured.out)[0]
    assert row["trace"] and row["answer"] and len(row["codes"]) == 64
    assert Path(row["image"]) == tmp_path / "out" / "000.png" and Image.open(row["image"]).size == (32, 32)
    assert "reasoning: gen8/blk8/steps8" in captured.err
    assert main(["t2i", str(ckpt), "--prompt", "x", "--save", str(tmp_path / "o2")]) == 2
    assert "--save needs --image-tokenizer" in capsys.readouterr().err
    # evaluation: mmada eval t2i --think scores the r2i images and keeps each description
    out = tmp_path / "eval"
    assert main(["eval", "t2i", "--checkpoint", str(ckpt), "--image-tokenizer", str(vq), "--n", "2", "--steps", "2",
                 "--think", "--think-gen-length", "8", "--think-steps", "8", "--think-block-length", "8",
                 "--device", "cpu", "--out", str(out / "r.json"), "--samples-out", str(out / "rows.jsonl")]) == 0
    capsys.readouterr()
    report = json.loads((out / "r.json").read_text())
    assert report["n"] == 2 and report["details"]["mode"] == "r2i"
    assert report["details"]["reasoning_sampler"]["gen_length"] == 8
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(isinstance(r["trace"], str) for r in rows)


def test_r2i_rollout_masks_and_first_policy_step(tok):
    """UniGRPO r2i rollouts: the description up to its first EOS and the image are scored, the fill is the tail."""
    from mmada.rl import GRPOConfig, policy_loss, prepare_iterations, rollout_r2i, score_rollout

    sb = SequenceBuilder(tok)
    model = tiny(num_vq_tokens=16).eval()
    text = SamplerSettings(steps=8, gen_length=8, block_length=8, temperature=1.0)
    g = torch.Generator().manual_seed(0)
    r = rollout_r2i(model, sb, CAPTIONS, 2, text=text, image=ImageSamplerSettings(steps=2), decode=None,
                    num_image_tokens=16, codebook_size=1024, max_text_len=128, generator=g)
    sp = sb.special
    assert r.kind == "r2i" and r.sequences.shape == (4, 1 + 128 + 1 + 16 + 1) and r.prompt_index == [0, 0, 1, 1]
    assert torch.equal(r.sequences[:, -17:-1], r.extra["codes"] + sp.image_offset)
    assert not (r.completion_mask & r.prompt_mask).any() and not (r.tail_mask & r.completion_mask).any()
    for i in range(4):
        p = len(sb.r2i_prompt(CAPTIONS[i // 2]))
        text_part = r.sequences[i, p:129].tolist()  # description, EOS, fill
        k = text_part.index(sp.eos) + 1
        assert r.completion_mask[i, p:129].tolist() == [True] * k + [False] * (129 - p - k)
        assert r.tail_mask[i, p:129].tolist() == [False] * k + [True] * (129 - p - k)
        assert r.completion_mask[i, -17:-1].all() and not r.completion_mask[i, -1]
    cfg = GRPOConfig(num_generations=2, beta=0.0, reward_funcs=["shapes_t2i"], reward_weights={})
    r.completions = [Image.new("RGB", (32, 32), c) for c in ("red", "white", "blue", "white")]
    scored = score_rollout(r, cfg, CAPTIONS, {"caption": CAPTIONS, "metadata": [None, None]})
    its = prepare_iterations(model, None, r, cfg, mask_id=sp.mask, generator=g)
    assert not (its[0].noised.masked & ~r.completion_mask).any()
    out = policy_loss(model, scored, its[0], cfg)
    assert float(out.ratio_mean) == 1.0
    assert float(out.loss.detach()) == pytest.approx(-float(scored.advantages.advantages.mean()), abs=1e-6)
    with pytest.raises(ConfigError, match="max_text_len=12 cannot hold the r2i prompt"):
        rollout_r2i(model, sb, CAPTIONS, 2, text=text, image=ImageSamplerSettings(steps=2), decode=None,
                    num_image_tokens=16, codebook_size=1024, max_text_len=12)


def test_unigrpo_stage_with_an_r2i_stream(tok, tmp_path_factory, tmp_path):
    """The grpo stage rolls out r2i prompts (shapes captions), rewards the images, registers a version."""
    from mlflow import MlflowClient

    from mmada.training import load_train_config, train
    from tests.test_training_support import curated_data, fresh_mlflow_uri, tiny_config

    data = curated_data(tmp_path_factory)
    ckpt = tmp_path / "ckpt"
    tiny(num_vq_tokens=64).save_pretrained(ckpt)
    tok.save_pretrained(str(ckpt))
    uri = fresh_mlflow_uri(tmp_path_factory, tmp_path)
    cfg = tiny_config(data, tmp_path / "grpo", uri, stage="sft", steps=2)
    cfg.update(stage="grpo", model={"init": str(ckpt)}, samples={"every_n_steps": 1},
               grpo={"num_generations": 2, "beta": 0.0, "reward_funcs": ["shapes_t2i"], "reward_weights": {},
                     "sampler": {"steps": 8, "gen_length": 8, "block_length": 8, "temperature": 1.0},
                     "image_sampler": {"steps": 2}})
    cfg["data"] = {**cfg["data"], "streams": {"r2i": {"manifests": [data["shapes"]], "batch_size": 1,
                                                      "max_text_len": 128}}}
    result = train(load_train_config(cfg))
    assert result.global_step == 2 and result.model_version == "1"
    metrics = MlflowClient(uri).get_run(result.run_id).data.metrics
    assert {"r2i/reward", "r2i/rewards/shapes_t2i/mean", "r2i/policy_loss"} <= set(metrics)
    table = json.loads((tmp_path / "grpo" / "grpo_samples" / "step00000000" / "completions.json").read_text())
    assert [row["task"] for row in table] == ["r2i", "r2i"] and all("description" in row for row in table)
    assert (tmp_path / "grpo" / "grpo_samples" / "step00000000" / "r2i_grid.png").is_file()
