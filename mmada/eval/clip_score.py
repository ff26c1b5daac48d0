"""CLIP score of image–caption pairs with a CLIP model given by *local path* (no hub downloads).

Definition (torchmetrics ``CLIPScore``, Hessel et al. with w = 100): per pair
``max(100 · cos(E_I, E_C), 0)`` with L2-normalised projected embeddings, averaged over pairs.
torchmetrics itself clips the *mean* (``max(mean(100·cos), 0)``), which only differs when some
pairs have negative cosine; both are reported (``clip_score`` and ``clip_score_torchmetrics``) so
numbers can be matched to either. Captions are truncated to the text model's
``max_position_embeddings`` (77 for OpenAI CLIP). Always state the CLIP variant next to the score
(the report's ``clip_model`` field).

    scorer = CLIPScorer("/models/clip-vit-large-patch14")
    scorer.score(images, captions)  # {"clip_score": …, "clip_score_torchmetrics": …, "n": …}
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmada.errors import MMaDAError


def _to_pil(im) -> Image.Image:
    if isinstance(im, Image.Image):
        return im.convert("RGB")
    a = np.asarray(im.detach().cpu() if hasattr(im, "detach") else im)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    if a.dtype != np.uint8:
        a = (a * 255 if a.max() <= 1.0 else a).clip(0, 255).round().astype(np.uint8)
    return Image.fromarray(a).convert("RGB")


class CLIPScorer:
    """Loads ``CLIPModel`` + ``CLIPProcessor`` from a local directory once; scores batches."""

    def __init__(self, model_path: str | os.PathLike, *, device: str | torch.device = "cpu", batch_size: int = 32):
        from transformers import CLIPModel, CLIPProcessor

        p = Path(model_path)
        if not (p / "config.json").is_file():
            raise MMaDAError(f"CLIP model path {p} has no config.json (a local CLIPModel directory is required)")
        self.model_path = str(p)
        self.model = CLIPModel.from_pretrained(p, local_files_only=True).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(p, local_files_only=True)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_text_len = int(self.model.config.text_config.max_position_embeddings)

    @staticmethod
    def _pooled(out) -> torch.Tensor:
        # transformers ≥ 5 returns a model output whose pooler_output is the projected embedding
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.no_grad()
    def cosines(self, images: Sequence, captions: Sequence[str]) -> np.ndarray:
        """Cosine similarity (N,) between each image and its caption."""
        if len(images) != len(captions):
            raise MMaDAError(f"{len(images)} images for {len(captions)} captions; lengths must match")
        out = []
        for i in range(0, len(images), self.batch_size):
            ims = [_to_pil(x) for x in images[i : i + self.batch_size]]
            caps = [str(c) for c in captions[i : i + self.batch_size]]
            pix = self.processor(images=ims, return_tensors="pt")["pixel_values"].to(self.device)
            tok = self.processor(
                text=caps, return_tensors="pt", padding=True, truncation=True, max_length=self.max_text_len
            )
            e_i = self._pooled(self.model.get_image_features(pixel_values=pix))  # (b, D)
            e_t = self._pooled(
                self.model.get_text_features(
                    input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
                )
            )  # (b, D)
            e_i = e_i / e_i.norm(dim=-1, keepdim=True)
            e_t = e_t / e_t.norm(dim=-1, keepdim=True)
            out.append((e_i * e_t).sum(-1).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0)

    def score(self, images: Sequence, captions: Sequence[str]) -> dict:
        """``clip_score`` (mean of per-pair clipped 100·cos), ``clip_score_torchmetrics``, ``n``."""
        if len(images) == 0:
            raise MMaDAError("no images to score")
        cos = self.cosines(images, captions).astype(np.float64)
        per = np.maximum(100.0 * cos, 0.0)
        return {
            "clip_score": float(per.mean()),
            "clip_score_torchmetrics": float(max(100.0 * cos.mean(), 0.0)),
            "n": len(cos),
            "clip_model": self.model_path,
            "per_sample": per.tolist(),
        }
