"""MAGVIT-v2 image tokenizer (lookup-free quantizer): images ↔ discrete codes for MMaDA.

    from mmada.models.vq import MAGVITv2
    vq = MAGVITv2()                                # official architecture (showlab/magvitv2)
    vq = MAGVITv2.from_pretrained("ckpt_dir")      # official weights or one of our exports

Modules: ``config`` (VQConfig), ``layers``/``coders`` (encoder, decoder), ``lfq`` (quantizer),
``checkpoint`` (safe reading/writing), ``preprocess`` (PIL → [-1, 1] tensors), ``model``, ``encode``
(images → code arrays, ``.npz`` files). Loading a tokenizer by name (preset, Hub id, ``models:/``) is
:func:`mmada.data.vq.load_tokenizer_model`; training it is :mod:`mmada.training.vq`.
"""

from mmada.models.vq.checkpoint import CheckpointError
from mmada.models.vq.config import VQConfig, official_config
from mmada.models.vq.encode import codes_dtype, encode_images, save_codes
from mmada.models.vq.lfq import LFQOutput, LFQuantizer
from mmada.models.vq.model import MAGVITv2, TokenizerInputError, VQOutput
from mmada.models.vq.preprocess import ImageInputError, images_to_tensor, load_image, tensor_to_images

__all__ = [
    "CheckpointError",
    "ImageInputError",
    "LFQOutput",
    "LFQuantizer",
    "MAGVITv2",
    "TokenizerInputError",
    "VQConfig",
    "VQOutput",
    "codes_dtype",
    "encode_images",
    "images_to_tensor",
    "load_image",
    "official_config",
    "save_codes",
    "tensor_to_images",
]
