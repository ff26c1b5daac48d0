"""CLIP score with a tiny randomly initialised CLIP saved locally (built here; no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmada.builtin.shapes import generate_shapes
from mmada.errors import MMaDAError
from mmada.eval.clip_score import CLIPScorer

OPENAI_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
OPENAI_STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())  # a character-level byte BPE vocabulary, no merges
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    proc = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok,
    )
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(4)  # a seed whose cosines on the fixture pairs have both signs and a positive mean
    model = CLIPModel(cfg)
    with torch.no_grad():  # larger random weights so cosines spread over both signs
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(std=0.2)
    d = tmp_path_factory.mktemp("tiny_clip")
    model.save_pretrained(d)
    proc.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def pairs():
    recs = generate_shapes(8, seed=3)
    return [r["image"] for r in recs], [r["caption"] for r in recs]


def _independent_cosines(clip_dir, images, captions) -> np.ndarray:
    """Hand preprocessing (32×32 input: no resize/crop; /255, OpenAI mean/std) + model towers."""
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(clip_dir).eval()
    tok = CLIPTokenizer.from_pretrained(clip_dir)
    px = np.stack([(np.asarray(im, dtype=np.float64) / 255 - OPENAI_MEAN) / OPENAI_STD for im in images])
    px = torch.tensor(px.transpose(0, 3, 1, 2), dtype=torch.float32)
    out = []
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=px).pooler_output).double().numpy()
        for i, cap in enumerate(captions):
            ids = torch.tensor([tok(cap)["input_ids"]])
            txt = model.text_projection(model.text_model(input_ids=ids).pooler_output)[0].double().numpy()
            out.append(img[i] @ txt / np.linalg.norm(img[i]) / np.linalg.norm(txt))
    return np.array(out)


def test_clip_score_matches_independent_formula(clip_dir, pairs):
    images, captions = pairs
    scorer = CLIPScorer(clip_dir, batch_size=3)  # several batches, padded captions
    res = scorer.score(images, captions)
    cos = _independent_cosines(clip_dir, images, captions)
    assert (cos > 0).any() and (cos < 0).any()  # both signs, so the clipping matters
    np.testing.assert_allclose(res["per_sample"], np.maximum(100 * cos, 0), rtol=1e-4, atol=1e-4)
    assert res["clip_score"] == pytest.approx(float(np.maximum(100 * cos, 0).mean()), rel=1e-4, abs=1e-4)
    assert res["clip_score_torchmetrics"] == pytest.approx(max(float(100 * cos.mean()), 0.0), rel=1e-4, abs=1e-4)
    assert res["n"] == 8 and res["clip_model"] == str(clip_dir)


def test_torchmetrics_clipscore_agrees(clip_dir, pairs):
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    class Towers(torch.nn.Module):
        """torchmetrics 1.9 expects tensors from get_*_features; transformers 5 returns outputs."""

        def __init__(self, m):
            super().__init__()
            self.m, self.config = m, m.config

        def get_image_features(self, pixel_values):
            return self.m.get_image_features(pixel_values=pixel_values).pooler_output

        def get_text_features(self, input_ids, attention_mask):
            return self.m.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    images, captions = pairs
    m, p = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    metric = CLIPScore(model_name_or_path=lambda: (Towers(m), p))
    tensors = [torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1) for im in images]
    ours = CLIPScorer(clip_dir).score(images, captions)
    assert ours["clip_score_torchmetrics"] > 1.0  # a positive mean: the comparison is not 0 == 0
    with torch.no_grad():
        tm = float(metric(tensors, captions))
    assert tm == pytest.approx(ours["clip_score_torchmetrics"], rel=1e-4, abs=1e-4)
    assert tm != pytest.approx(ours["clip_score"], abs=0.1)  # torchmetrics clips the mean, not each pair


def test_clip_errors(tmp_path, clip_dir, pairs):
    with pytest.raises(MMaDAError, match=r"no config\.json"):
        CLIPScorer(tmp_path)
    with pytest.raises(MMaDAError, match="lengths must match"):
        CLIPScorer(clip_dir).score(pairs[0][:2], pairs[1][:3])
