"""Load a model checkpoint directory, turning every way its weights can fail to load into one line.

``MMaDAModelLM.from_pretrained`` reads safetensors, or a legacy ``pytorch_model.bin`` through
``torch.load(weights_only=True)``: a pickle that holds anything but tensors (code to run on load) is
refused there and never executed. What is refused, truncated or corrupt surfaces as a
:class:`WeightsError` naming the directory and the reason in one line, not as a library traceback.

    model = load_model("runs/pipeline/models/sft", dtype=torch.float32)
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from mmada.errors import MMaDAError
from mmada.models.modeling import MMaDAModelLM


class WeightsError(MMaDAError):
    """A checkpoint's weights do not load (a refused pickle, a truncated or corrupt file)."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``exc``'s message on one line (library messages can span paragraphs), cut at ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_model(src: str | Path, **kwargs: Any) -> MMaDAModelLM:
    """``MMaDAModelLM.from_pretrained(src, **kwargs)``; raises :class:`WeightsError` when the weights do not load."""
    try:
        return MMaDAModelLM.from_pretrained(str(src), **kwargs)
    except pickle.UnpicklingError as exc:
        found = re.search(r"WeightsUnpickler error: ([^.]*)", str(exc))
        why = found.group(1) if found else one_line(exc, 120)
        raise WeightsError(
            f"{src}: refused its pickled weights (not plain tensors, loading them could run code: {why}); "
            "use a checkpoint saved as safetensors (model.safetensors)") from None
    except (SafetensorError, RuntimeError, EOFError) as exc:  # truncated zip, torn safetensors header, bad sizes
        raise WeightsError(f"{src}: its weights do not load ({type(exc).__name__}: {one_line(exc)})") from None
