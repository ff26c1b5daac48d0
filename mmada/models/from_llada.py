"""Starting MMaDA from LLaDA: grow a text-only LLaDA checkpoint's vocabulary by the image codes.

The official stage 1 (Gen-Verse/MMaDA training/train_mmada.py, configs/mmada_pretraining_stage1_llada_instruct.yaml)
loads LLaDA-8B-Instruct with its config merged with ``llm_vocab_size: 126464, codebook_size: 8192,
num_vq_tokens: 256, new_vocab_size: 134656, mask_token_id: 126336``, then calls
``resize_token_embeddings(134656)`` and sets ``embedding_size = vocab_size``. Here:

    target = mmada_config_from_llada(MMaDAConfig.from_pretrained(llada_dir), vocab_size=134656,
                                     codebook_size=8192, num_vq_tokens=256)
    model = grow_from_llada(MMaDAModelLM.from_pretrained(llada_dir), target)

The new rows of the embedding and the head are the mean of LLaDA's rows
(:meth:`MMaDAModelLM.resize_token_embeddings`); the text rows are LLaDA's, unchanged, so text logits
over LLaDA's vocabulary are exactly LLaDA's. Image code ``c`` is token ``len(tokenizer) + c``
(126349 + c with LLaDA's tokenizer), inside the grown table.
"""

from __future__ import annotations

from mmada.errors import ConfigError
from mmada.models.configuration import LLADA_MASK_ID, MMaDAConfig
from mmada.models.modeling import MMaDAModelLM

# Keys of a LLaDA config.json that point at its remote-code files; a grown MMaDA config drops them.
_REMOTE_CODE_KEYS = ("auto_map", "architectures", "model_type")


def mmada_config_from_llada(
    llada: MMaDAConfig, *, vocab_size: int, codebook_size: int, num_vq_tokens: int,
    mask_token_id: int = LLADA_MASK_ID, where: str = "model.from_llada",
) -> MMaDAConfig:
    """The MMaDA config of a grown LLaDA checkpoint: LLaDA's rows are the text rows (``llm_vocab_size``)."""
    if llada.codebook_size:
        raise ConfigError(
            f"{where}: the checkpoint already has codebook_size={llada.codebook_size} image codes; start from it "
            "with model.init alone"
        )
    llm = llada.vocab_size
    if vocab_size < llm + codebook_size:
        raise ConfigError(
            f"{where}.vocab_size={vocab_size} < the checkpoint's {llm} text rows + codebook_size={codebook_size}"
        )
    fields = {k: v for k, v in llada.to_dict().items() if k not in _REMOTE_CODE_KEYS}
    fields |= {"vocab_size": vocab_size, "embedding_size": vocab_size, "llm_vocab_size": llm,
               "codebook_size": codebook_size, "num_vq_tokens": num_vq_tokens, "mask_token_id": mask_token_id}
    try:
        return MMaDAConfig.from_dict(fields)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def grow_from_llada(model: MMaDAModelLM, target: MMaDAConfig) -> MMaDAModelLM:
    """Resize ``model`` (loaded with its LLaDA config) to ``target``'s vocabulary and adopt ``target``."""
    if model.config.vocab_size != target.llm_vocab_size:
        raise ConfigError(
            f"model.from_llada: the checkpoint has {model.config.vocab_size} rows, the target config expects "
            f"{target.llm_vocab_size} text rows"
        )
    model.resize_token_embeddings(target.vocab_size)
    # The config object is shared with the inner modules: update it in place rather than replace it.
    for key, value in target.to_dict().items():
        if key not in ("model_type", "transformers_version"):
            setattr(model.config, key, value)
    model.config.validate()
    return model
