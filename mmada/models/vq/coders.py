"""MAGVIT-v2 encoder and decoder (VQGAN-style conv stacks with a mid-block attention).

Encoder: ``conv_in`` → per level ``block[j]`` (+ ``attn[j]``) and a ``downsample`` except on the
last level → ``mid.block_1/attn_1/block_2`` → ``norm_out`` → SiLU → ``conv_out`` → ``quant_conv``.
Decoder: ``post_quant_conv`` → ``conv_in`` → ``mid`` → levels from coarsest to finest, each with an
``upsample`` except level 0 → ``norm_out`` → SiLU → ``conv_out``. ``up[0]`` is the finest level,
as in the official module list.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmada.models.vq.config import VQConfig
from mmada.models.vq.layers import AttnBlock, Downsample, ResnetBlock, Upsample, group_norm


class Level(nn.Module):
    """One resolution level: residual blocks, optional attention after each, optional resampler."""

    def __init__(self, in_ch: int, out_ch: int, n_blocks: int, *, attend: bool, groups: int, dropout: float):
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(in_ch if j == 0 else out_ch, out_ch, groups=groups, dropout=dropout) for j in range(n_blocks)
        )
        self.attn = nn.ModuleList(AttnBlock(out_ch, groups=groups) for _ in range(n_blocks) if attend)

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[j](h)
        return h


class Mid(nn.Module):
    def __init__(self, ch: int, *, groups: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch, groups=groups, dropout=dropout)
        self.attn_1 = AttnBlock(ch, groups=groups)
        self.block_2 = ResnetBlock(ch, ch, groups=groups, dropout=dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class VQGANEncoder(nn.Module):
    """Pixels ``(B, in_channels, H, W)`` → latents ``(B, z_channels, H/f, W/f)``."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        g, p = cfg.norm_groups, cfg.dropout
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, kernel_size=3, padding=1)
        self.down = nn.ModuleList()
        res, block_in = cfg.resolution, cfg.ch
        for i, (mult, n) in enumerate(zip(cfg.ch_mult, cfg.num_res_blocks)):
            block_out = cfg.ch * mult
            level = Level(block_in, block_out, n, attend=res in cfg.attn_resolutions, groups=g, dropout=p)
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(block_out)
                res //= 2
            self.down.append(level)
            block_in = block_out
        self.mid = Mid(block_in, groups=g, dropout=p)
        self.norm_out = group_norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, kernel_size=3, padding=1)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, ch, H, W)
        for level in self.down:
            h = level.run_blocks(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)  # (B, C, H/2, W/2)
        h = self.mid(h)  # (B, ch·ch_mult[-1], H/f, W/f)
        h = self.conv_out(F.silu(self.norm_out(h)))  # (B, z, H/f, W/f)
        return self.quant_conv(h)


class VQGANDecoder(nn.Module):
    """Latents / ±1 codes ``(B, z_channels, h, w)`` → pixels ``(B, out_channels, h·f, w·f)`` (unclamped)."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        g, p = cfg.norm_groups, cfg.dropout
        n_levels = len(cfg.dec_ch_mult)
        block_in = cfg.ch * cfg.dec_ch_mult[-1]
        res = cfg.resolution // 2 ** (n_levels - 1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, kernel_size=1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, kernel_size=3, padding=1)
        self.mid = Mid(block_in, groups=g, dropout=p)
        levels: list[Level] = []
        for i in reversed(range(n_levels)):  # coarsest first
            block_out = cfg.ch * cfg.dec_ch_mult[i]
            level = Level(
                block_in, block_out, cfg.dec_num_res_blocks[i], attend=res in cfg.attn_resolutions, groups=g, dropout=p
            )
            if i != 0:
                level.upsample = Upsample(block_out)
                res *= 2
            levels.insert(0, level)  # up[0] is the finest level
            block_in = block_out
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self.post_quant_conv(z))  # (B, ch·dec_ch_mult[-1], h, w)
        h = self.mid(h)
        for level in reversed(self.up):
            h = level.run_blocks(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)  # (B, C, 2h, 2w)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, out_channels, H, W)
