"""Model definitions: the unified MMaDA transformer (and, in ``mmada.models.vq``, the image tokenizer).

Importing this package registers ``model_type`` ``mmada`` and ``llada`` with transformers'
``AutoConfig`` / ``AutoModel`` / ``AutoModelForCausalLM`` / ``AutoModelForMaskedLM``, so official
checkpoint directories load with ``AutoModel.from_pretrained(path)`` and no ``trust_remote_code``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

from mmada.models.configuration import PRESETS, LLaDAConfig, MMaDAConfig
from mmada.models.modeling import MMaDABlock, MMaDAModelLM, check_ids


class LLaDAModelLM(MMaDAModelLM):
    """The same model for ``model_type="llada"`` configs (official LLaDA checkpoints)."""

    config_class = LLaDAConfig


def _register() -> None:
    for config_cls, model_cls in ((MMaDAConfig, MMaDAModelLM), (LLaDAConfig, LLaDAModelLM)):
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        for auto in (AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM):
            auto.register(config_cls, model_cls, exist_ok=True)


_register()

__all__ = ["PRESETS", "LLaDAConfig", "LLaDAModelLM", "MMaDABlock", "MMaDAConfig", "MMaDAModelLM", "check_ids"]
