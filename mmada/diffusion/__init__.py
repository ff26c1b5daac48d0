"""Masked-diffusion objectives and samplers for the unified model."""

from mmada.diffusion.losses import LossOutput, lm_loss, masked_accuracy, sft_loss, t2i_loss, unified_loss
from mmada.diffusion.masking import cosine_schedule, get_schedule, mask_image, mask_text
from mmada.diffusion.sampling import add_gumbel_noise, generate_image, generate_text, num_transfer_tokens
from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings

__all__ = [
    "ImageSamplerSettings",
    "LossOutput",
    "SamplerSettings",
    "add_gumbel_noise",
    "cosine_schedule",
    "generate_image",
    "generate_text",
    "get_schedule",
    "lm_loss",
    "mask_image",
    "mask_text",
    "masked_accuracy",
    "num_transfer_tokens",
    "sft_loss",
    "t2i_loss",
    "unified_loss",
]
