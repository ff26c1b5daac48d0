"""Architecture config of the MAGVIT-v2 image tokenizer (encoder, decoder, lookup-free quantizer).

The defaults are the official ``showlab/magvitv2`` network (the one MMaDA uses): 16× downsampling,
13 LFQ bits → 8192 codes. Smaller tokenizers (``configs/vq/tiny.yaml``) change the widths, depths
and bit count but keep the same module tree, so one loader and one trainer serve both.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_CODEBOOK_BITS = 20  # the ±1 codebook buffer is (2**bits, bits) floats: 80 MB at 20 bits


class VQConfig(BaseModel):
    """Shape of a MAGVIT-v2 tokenizer. Field names follow the official ``VQGANEncoder`` arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ch: int = Field(128, ge=1)
    """Base channel count; level ``i`` of the encoder has ``ch * ch_mult[i]`` channels."""
    ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4)
    """Encoder channel multipliers, one per resolution level (``len - 1`` downsamplings)."""
    num_res_blocks: tuple[int, ...] = (4, 3, 4, 3, 4)
    """Encoder residual blocks per level."""
    dec_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    """Decoder channel multipliers (level 0 = full resolution, as in the official decoder)."""
    dec_num_res_blocks: tuple[int, ...] = (4, 4, 3, 4, 3)
    """Decoder residual blocks per level."""
    attn_resolutions: tuple[int, ...] = (5,)
    """Feature-map sizes (relative to ``resolution``) that get a self-attention block after each
    residual block. The official value 5 never occurs, so only the mid-block attends."""
    resolution: int = Field(256, ge=1)
    """Nominal input size; used only to place ``attn_resolutions`` (the network is convolutional)."""
    z_channels: int = Field(13, ge=1, le=MAX_CODEBOOK_BITS)
    """Latent channels = LFQ bits; the codebook has ``2**z_channels`` entries."""
    in_channels: int = Field(3, ge=1)
    out_channels: int = Field(3, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    norm_groups: int = Field(32, ge=1)
    """GroupNorm groups (32 in the official network); every width must be divisible by it."""

    @model_validator(mode="after")
    def _check(self) -> VQConfig:
        if len(self.ch_mult) != len(self.num_res_blocks):
            raise ValueError(
                f"ch_mult has {len(self.ch_mult)} levels but num_res_blocks has {len(self.num_res_blocks)}"
            )
        if len(self.dec_ch_mult) != len(self.dec_num_res_blocks):
            raise ValueError(
                f"dec_ch_mult has {len(self.dec_ch_mult)} levels but dec_num_res_blocks has "
                f"{len(self.dec_num_res_blocks)}"
            )
        if len(self.ch_mult) != len(self.dec_ch_mult):
            raise ValueError(
                f"encoder ({len(self.ch_mult)} levels) and decoder ({len(self.dec_ch_mult)} levels) must "
                "down- and upsample by the same factor"
            )
        if not self.ch_mult or min(self.ch_mult + self.dec_ch_mult) < 1:
            raise ValueError(f"ch_mult/dec_ch_mult must be non-empty positive integers, got {self.ch_mult}")
        if min(self.num_res_blocks + self.dec_num_res_blocks) < 1:
            raise ValueError("num_res_blocks/dec_num_res_blocks must all be >= 1")
        for name, mults in (("ch_mult", self.ch_mult), ("dec_ch_mult", self.dec_ch_mult)):
            bad = [self.ch * m for m in mults if (self.ch * m) % self.norm_groups]
            if bad:
                raise ValueError(f"{name}: widths {bad} are not divisible by norm_groups={self.norm_groups}")
        return self

    @property
    def codebook_size(self) -> int:
        return 2**self.z_channels

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid ``(h, w)`` for an input of ``height × width`` pixels."""
        f = self.downsample_factor
        return height // f, width // f

    def to_json_dict(self) -> dict:
        """Plain JSON-able dict (lists, not tuples) for ``config.json``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_dump().items()}




def official_config() -> VQConfig:
    """The ``showlab/magvitv2`` architecture (all defaults)."""
    return VQConfig()
