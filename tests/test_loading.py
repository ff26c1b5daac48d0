"""The training data module: WebDataset streams from curated shards, mixing, collation, seeds, splits.

Rows are checked against an independent reading of the same shards (``ShardSet.iter_samples``)
and the string-level ``SequenceBuilder`` layouts; image codes against the shard's ``codes.npy``
and against ``encode_images`` of the PNGs.
"""

from __future__ import annotations

import io
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmada.data.errors import ShardError
from mmada.data.loading import MixedBatches, ShardDataModule, ValBatches, plan_stream, val_batches_per_rank
from mmada.data.shards import ShardSet
from mmada.errors import ConfigError, MMaDAError
from mmada.tokenization import SequenceBuilder, load_text_tokenizer
from mmada.training.config import DataSpec
from tests.test_training_support import curated_data, one_thread

N_VQ = 64  # tiny image tokenizer: 32×32 → 8×8 codes

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return curated_data(tmp_path_factory)


@pytest.fixture(scope="module")
def tok():
    return load_text_tokenizer("builtin")


def spec(**kw) -> DataSpec:
    return DataSpec.model_validate({"shuffle_buffer": 10, **kw})


def samples_by_key(root: str) -> dict[str, dict]:
    return {s["__key__"]: s for s in ShardSet.open(root).iter_samples()}


def test_id_layouts_equal_string_layouts(tok):
    sb = SequenceBuilder(tok)
    prompts, answers = ["What is 2 + 3?", "Name the colour"], ["<think>2 + 3 = 5.</think> 5", "red"]
    codes = torch.randint(0, 1024, (2, 16))
    pairs = [
        (sb.chat(prompts, answers, max_text_len=64),
         sb.chat_from_ids([sb.chat_prompt(p) for p in prompts], [sb.encode(a) for a in answers], max_text_len=64)),
        (sb.mmu(codes, prompts, answers, max_text_len=64),
         sb.mmu_from_ids(codes, [sb.chat_prompt(p) for p in prompts], [sb.encode(a) for a in answers],
                         max_text_len=64)),
        (sb.t2i(["a red circle", ""], codes, max_text_len=8),
         sb.t2i_from_ids([sb.encode("a red circle"), []], codes, max_text_len=8)),
        (sb.lm(["one two", "x" * 300], max_text_len=32),
         sb.lm_from_ids([sb.encode("one two"), [sb.special.bos, *sb.encode("x" * 300)]], max_text_len=32)),
    ]
    for a, b in pairs:
        for f in ("input_ids", "attention_mask", "prompt_mask", "image_mask"):
            assert torch.equal(getattr(a, f), getattr(b, f)), f
    with pytest.raises(MMaDAError, match="max_text_len=4"):
        sb.chat_from_ids([[5] * 10], [[6]], max_text_len=4)


def test_rows_match_the_shards(data, tok):
    """Every row is its sample: prompt kept clean, response + EOS fill the target, image slots = shard codes."""
    d = spec(streams={"chat": {"manifests": [data["arithmetic"]], "batch_size": 3, "max_text_len": 200},
                      "t2i": {"manifests": [data["shapes_codes"]], "batch_size": 2, "max_text_len": 16}},
             cond_dropout_prob=0.0)
    dm = ShardDataModule(d, tok, num_vq_tokens=N_VQ, batches_per_epoch=3)
    batches = list(dm.train_dataset())
    assert len(batches) == 3
    arith, shapes = samples_by_key(data["arithmetic"]), samples_by_key(data["shapes_codes"])
    sb = SequenceBuilder(tok)
    eos = sb.special.eos
    for b in batches:
        chat, t2i = b["chat"], b["t2i"]
        assert chat["input_ids"].shape == (3, 200) and t2i["input_ids"].shape == (2, 16 + 2 + N_VQ + 1)
        for i, key in enumerate(chat["keys"]):
            s = arith[key]["json"]
            ids, pm = chat["input_ids"][i], chat["prompt_mask"][i]
            n_prompt = int(pm.sum())
            assert tok.decode(ids[:n_prompt]) == s.prompt
            assert not pm[n_prompt:].any()
            resp = sb.encode(s.response)
            assert ids[n_prompt:n_prompt + len(resp)].tolist() == resp
            assert (ids[n_prompt + len(resp):] == eos).all()
        for i, key in enumerate(t2i["keys"]):
            img = t2i["input_ids"][i][t2i["image_mask"][i]]
            assert img.tolist() == (shapes[key]["codes"].astype(np.int64) + sb.special.image_offset).tolist()
            assert tok.decode(t2i["input_ids"][i][t2i["attention_mask"][i]][2:-N_VQ - 3]) == shapes[key]["json"].caption
        assert "pixel_values" not in t2i


def test_codes_computed_on_the_fly(data, tok):
    """PNG-only shards: the batch carries pixels, the module writes encode_images(png) into the image slots."""
    from mmada.data.vq import load_tokenizer_model
    from mmada.models import MMaDAConfig
    from mmada.models.vq import encode_images
    from mmada.tokenization import SpecialTokenIds
    from mmada.training.config import load_train_config
    from mmada.training.module import DiffusionModule
    from tests.test_training_support import tiny_config

    d = spec(streams={"t2i": {"manifests": [data["shapes"]], "batch_size": 3, "max_text_len": 16},
                      "mmu": {"manifests": [data["shapes_vqa"]], "batch_size": 2, "max_text_len": 144}},
             image_tokenizer=data["vq"], image_resolution=32)
    batch = next(iter(ShardDataModule(d, tok, num_vq_tokens=N_VQ, batches_per_epoch=1).train_dataset()))
    assert batch["t2i"]["pixel_values"].shape == (3, 3, 32, 32) and batch["t2i"]["needs_codes"].all()
    cfg = load_train_config(tiny_config(data, Path("/tmp/unused"), "sqlite:///unused.db"))
    module = DiffusionModule(cfg, model_config=MMaDAConfig.from_preset("tiny"),
                             special=SpecialTokenIds.from_tokenizer(tok))
    out = module.on_after_batch_transfer(batch, 0)
    vq = load_tokenizer_model(data["vq"])
    for task, root in (("t2i", data["shapes"]), ("mmu", data["shapes_vqa"])):
        pngs = samples_by_key(root)
        images = [Image.open(io.BytesIO(pngs[k]["png"])).convert("RGB") for k in out[task]["keys"]]
        ref = encode_images(vq, images, resolution=32)
        got = out[task]["input_ids"][out[task]["image_mask"]].view(len(images), -1) - 1024
        assert got.tolist() == ref.astype(np.int64).tolist()
        assert "pixel_values" not in out[task]


def test_ranks_and_workers_get_different_reproducible_streams(data, tok):
    d = spec(streams={"lm": {"manifests": [data["arithmetic"]], "batch_size": 4, "max_text_len": 64}}, seed=3)
    plans = {"lm": plan_stream("lm", d.streams["lm"])}
    sb = SequenceBuilder(tok)

    def keys(rank, start_step=0, n=6):
        ds = MixedBatches(plans, d, sb, N_VQ, rank=rank, world=2, start_step=start_step)
        it = iter(ds)
        return [tuple(next(it)["lm"]["keys"]) for _ in range(n)]

    r0, r1 = keys(0), keys(1)
    assert r0 == keys(0)  # same seed, rank and step: the same stream
    assert all(a != b for a, b in zip(r0, r1))  # ranks differ at every step
    assert keys(0, start_step=40) != r0  # a resumed run is re-seeded by its step
    # with_epoch: every rank (and DataLoader worker) yields exactly the epoch length
    dm = ShardDataModule(d, tok, num_vq_tokens=N_VQ, batches_per_epoch=5)
    assert sum(1 for _ in dm.train_dataset()) == 5
    d2 = d.model_copy(update={"num_workers": 2})
    loader = ShardDataModule(d2, tok, num_vq_tokens=N_VQ, batches_per_epoch=5).train_dataloader()
    worker_batches = [tuple(b["lm"]["keys"]) for b in loader]
    assert len(worker_batches) == 6  # ceil(5 / 2) per worker × 2 workers
    assert worker_batches[0] != worker_batches[1]  # workers are seeded apart


def test_mixing_by_weights(data, tok):
    d = spec(streams={"chat": {"manifests": [data["arithmetic"]], "weight": 3.0, "max_text_len": 200},
                      "lm": {"manifests": [data["arithmetic"]], "weight": 1.0, "max_text_len": 64}},
             mixing="weights", batch_size=8)
    dm = ShardDataModule(d, tok, num_vq_tokens=N_VQ, batches_per_epoch=40)
    counts: Counter = Counter()
    for b in dm.train_dataset():
        assert sum(v["input_ids"].shape[0] for v in b.values()) == 8
        counts.update({t: v["input_ids"].shape[0] for t, v in b.items()})
    share = counts["chat"] / (counts["chat"] + counts["lm"])
    assert 0.68 < share < 0.82  # 0.75 expected; 320 draws


def test_validation_is_an_exact_node_split(data, tok):
    d = spec(streams={"chat": {"manifests": [data["arithmetic"]], "batch_size": 2, "val_batch_size": 5,
                               "max_text_len": 200}})
    plan = plan_stream("chat", d.streams["chat"])
    sb = SequenceBuilder(tok)
    limit = val_batches_per_rank(plan, 2, None)
    per_rank = []
    for rank in (0, 1):
        batches = list(ValBatches(plan, d, sb, N_VQ, rank=rank, world=2, limit=limit))
        assert len(batches) == limit  # equal on every rank
        per_rank.append([k for b in batches for k in b["chat"]["keys"]])
    a, b = map(set, per_rank)
    assert not a & b  # each validation sample goes to one rank only
    val_keys = {s["__key__"] for s in ShardSet.open(data["arithmetic"]).iter_samples("val")}
    assert a | b <= val_keys and len(a | b) == limit * 5 * 2
    # one shard cannot be split over two ranks: no validation batches rather than a hang
    one = plan_stream("t2i", spec(streams={"t2i": {"manifests": [data["shapes"]]}}).streams["t2i"])
    assert val_batches_per_rank(one, 2, None) == 0 and val_batches_per_rank(one, 1, None) > 0


def test_bad_inputs_name_the_field(data, tok, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.streams\.t2i\.manifests: .* holds 'reasoning' samples"):
        plan_stream("t2i", spec(streams={"t2i": {"manifests": [data["arithmetic"]]}}).streams["t2i"])
    d = spec(streams={"t2i": {"manifests": [data["shapes"]], "max_text_len": 16}})  # PNGs, no tokenizer
    with pytest.raises(ConfigError, match=r"data\.image_tokenizer"):
        next(iter(ShardDataModule(d, tok, num_vq_tokens=N_VQ, batches_per_epoch=1).train_dataset()))
    d = spec(streams={"t2i": {"manifests": [data["shapes_codes"]], "max_text_len": 16}})
    with pytest.raises(ConfigError, match="num_vq_tokens=16"):
        next(iter(ShardDataModule(d, tok, num_vq_tokens=16, batches_per_epoch=1).train_dataset()))
    d = spec(streams={"mmu": {"manifests": [data["shapes"]], "max_text_len": 24}}, image_tokenizer=data["vq"])
    with pytest.raises(ConfigError, match=r"data\.streams\.mmu\.max_text_len=24: .* raise max_text_len"):
        next(iter(ShardDataModule(d, tok, num_vq_tokens=N_VQ, batches_per_epoch=1).train_dataset()))
    bad = tmp_path / "arith"
    shutil.copytree(data["arithmetic"], bad)
    shard = sorted(bad.glob("*-train-*.tar"))[0]
    raw = bytearray(shard.read_bytes())
    raw[700] ^= 0xFF  # same size, different bytes
    shard.write_bytes(bytes(raw))
    d = spec(streams={"lm": {"manifests": [str(bad)], "batch_size": 64, "max_text_len": 32}})
    with pytest.raises(ShardError, match=f"{shard.name} is corrupt"):
        for _ in ShardDataModule(d, tok, num_vq_tokens=N_VQ, batches_per_epoch=8).train_dataset():
            pass
