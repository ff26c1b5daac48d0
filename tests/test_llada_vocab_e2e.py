"""The official vocabulary layout end to end: SFT, text-to-image and MMU on a tiny model with LLaDA's ids.

The tokenizer has LLaDA's 126349 entries and special ids (tests/llada_layout.py), saved and loaded
like a checkpoint's; the model has LLaDA's 126464 text rows plus the image codes, a small hidden
size. Image code ``c`` must be token ``126349 + c`` everywhere: in training rows, in the sampled
t2i sequence and in the MMU prompt.
"""

from __future__ import annotations

import pytest
import torch

from mmada.data.loading import ShardDataModule
from mmada.data.shards import ShardSet
from mmada.data.streams import DataSpec
from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.eval.runners import MagvitCodec, evaluate_qa, generate_images
from mmada.inference import generate_image_codes, load_checkpoint
from mmada.tokenization import CHAT_TEMPLATE, load_text_tokenizer
from mmada.training import load_train_config, train
from tests.llada_layout import llada_overrides, llada_tokenizer_dir
from tests.test_training_support import (
    TINY_OVERRIDES,
    curated_data,
    fresh_mlflow_uri,
    one_thread,
    tiny_config,
)

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return curated_data(tmp_path_factory)


def test_sft_t2i_and_mmu_with_the_llada_vocabulary(data, tmp_path_factory, tmp_path, capsys):
    tok_dir = llada_tokenizer_dir(tmp_path / "llada-tokenizer")
    check_training_rows(data, load_text_tokenizer(str(tok_dir)))
    uri = fresh_mlflow_uri(tmp_path_factory, tmp_path)
    streams = {"chat": {"manifests": [data["arithmetic"]], "batch_size": 1, "max_text_len": 160},
               "mmu": {"manifests": [data["shapes_vqa"]], "batch_size": 1, "max_text_len": 144},
               "t2i": {"manifests": [data["shapes"]], "batch_size": 2, "max_text_len": 16}}
    cfg = tiny_config(data, tmp_path / "sft", uri, stage="sft", steps=3,
                      model={"overrides": {**TINY_OVERRIDES, **llada_overrides(1024)}, "tokenizer": str(tok_dir)},
                      data={"streams": streams, "val_batches": 0})
    result = train(load_train_config(cfg))
    assert result.global_step == 3 and result.model_version == "1"

    lm = load_checkpoint(result.export_dir, device="cpu")
    sp = lm.builder.special
    assert len(lm.tokenizer) == 126349 and sp.image_offset == 126349 and sp.mask == 126336
    assert lm.model.config.vocab_size == 126464 + 1024 and lm.model.config.llm_vocab_size == 126464

    # The exported tokenizer carries the official chat template, not the one the tokenizer shipped.
    assert lm.tokenizer.chat_template == CHAT_TEMPLATE
    assert lm.tokenizer.decode(lm.builder.chat_prompt("Hi")) == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n")

    # text-to-image: the sampled codes are placed at 126349 + c in the sequence the sampler filled
    codes = generate_image_codes(lm, ["a red circle", "a blue square"], ImageSamplerSettings(steps=3, seed=1),
                                 max_text_len=16)
    assert codes.shape == (2, 64) and int(codes.min()) >= 0 and int(codes.max()) < 1024
    seq = lm.builder.t2i(["a red circle"], codes[:1], max_text_len=16)
    assert torch.equal(seq.input_ids[0, seq.image_mask[0]], codes[0] + 126349)
    codec = MagvitCodec(data["vq"], resolution=32)
    images = generate_images(lm, codec, ["a red circle"], ImageSamplerSettings(steps=2))
    assert images[0].size == (32, 32)

    # MMU: image codes from the image tokenizer after <|mmu|><|soi|>, answered by the block sampler
    items = [{"id": "q0", "image": images[0], "question": "What shape is it?", "answer": "circle"}]
    report, rows = evaluate_qa(items, dataset="llada-layout", lm=lm, codec=codec,
                               sampler=SamplerSettings(steps=4, gen_length=8, block_length=4))
    assert report.n == 1 and isinstance(rows[0]["prediction"], str)
    img_codes = codec.encode(images)
    prompt = lm.builder.mmu(img_codes, ["What shape is it?"])
    start = int((~prompt.attention_mask[0]).sum())
    assert prompt.input_ids[0, start:start + 2].tolist() == [126089, 126084]  # <|mmu|> <|soi|>
    assert torch.equal(prompt.input_ids[0, prompt.image_mask[0]], img_codes[0] + 126349)


def check_training_rows(data, tok) -> None:
    """The data module's rows with the LLaDA tokenizer: stored codes at 126349 + c, official chat ids."""
    spec = DataSpec.model_validate({"shuffle_buffer": 4, "streams": {
        "t2i": {"manifests": [data["shapes_codes"]], "batch_size": 2, "max_text_len": 16},
        "chat": {"manifests": [data["arithmetic"]], "batch_size": 1, "max_text_len": 160}}})
    batch = next(iter(ShardDataModule(spec, tok, num_vq_tokens=64, batches_per_epoch=1).train_dataset()))
    t2i = batch["t2i"]
    stored = {s["__key__"]: s for s in ShardSet.open(data["shapes_codes"]).iter_samples()}
    for row, key in zip(range(2), t2i["keys"]):
        codes = torch.as_tensor(stored[key]["codes"], dtype=torch.long).flatten()
        assert torch.equal(t2i["input_ids"][row, t2i["image_mask"][row]], codes + 126349)
    chat = batch["chat"]["input_ids"][0].tolist()
    assert chat[:2] == [126080, 126346]  # <|startoftext|> <|start_header_id|>
    assert 126348 in chat and max(chat) < 126349  # <|eot_id|>; no text id in the image range
