"""taming-transformers' VQGAN building blocks in plain PyTorch, with taming's parameter names.

The module tree (``down.{level}.block.{i}.norm1``, ``mid.attn_1.q``, ``quantize.embedding``...) is what
published checkpoints are keyed by, so it follows taming's layout exactly: ``ch``, ``ch_mult``,
``num_res_blocks``, ``attn_resolutions`` (counted at the *configured* ``resolution``), GroupNorm(32, eps 1e-6),
swish, asymmetric-padded stride-2 downsampling, nearest-neighbour upsampling. The maths is taming's; attention
runs through ``scaled_dot_product_attention`` (the same softmax(qᵀk/√c)·v).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Encoder", "Decoder", "ResnetBlock", "AttnBlock", "Upsample", "Downsample", "VectorQuantizer2",
           "GumbelQuantize"]


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class Upsample(nn.Module):
    def __init__(self, in_channels: int, with_conv: bool) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    def __init__(self, in_channels: int, with_conv: bool) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.with_conv:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # taming pads right/bottom only


class ResnetBlock(nn.Module):
    """norm → swish → conv, twice, plus a 1×1 (``nin_shortcut``) or 3×3 (``conv_shortcut``) skip on a width change."""

    def __init__(self, *, in_channels: int, out_channels: int | None = None, conv_shortcut: bool = False,
                 dropout: float = 0.0, temb_channels: int = 0) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels, self.use_conv_shortcut = in_channels, out_channels, conv_shortcut
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        if temb_channels > 0:
            self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if temb is not None:
            h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the spatial positions, with 1×1-conv projections."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.norm = _norm(in_channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(in_channels, in_channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, height, width = h.shape
        q, k, v = (conv(h).reshape(b, 1, c, height * width).transpose(2, 3) for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (b, 1, hw, c)
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, height, width))


class _Level(nn.Module):
    """One resolution of the encoder or decoder (taming builds these as bare ``nn.Module()`` containers)."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Middle(nn.Module):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(in_channels=channels, out_channels=channels, dropout=dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(in_channels=channels, out_channels=channels, dropout=dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


def _run_level(level: _Level, h: torch.Tensor, i: int) -> torch.Tensor:
    h = level.block[i](h)
    return level.attn[i](h) if len(level.attn) else h


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) → latent (B, z_channels·(2 if double_z), H/f, W/f), f = 2^(len(ch_mult)−1)."""

    def __init__(self, *, ch: int, out_ch: int, ch_mult: tuple[int, ...] = (1, 2, 4, 8), num_res_blocks: int,
                 attn_resolutions: tuple[int, ...], dropout: float = 0.0, resamp_with_conv: bool = True,
                 in_channels: int, resolution: int, z_channels: int, double_z: bool = True, **ignore: Any) -> None:
        super().__init__()
        self.ch, self.temb_ch = ch, 0
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.resolution, self.in_channels = resolution, in_channels
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        in_ch_mult = (1, *ch_mult)
        res = resolution
        self.down = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            level = _Level()
            block_in, block_out = ch * in_ch_mult[i_level], ch * ch_mult[i_level]
            for _ in range(num_res_blocks):
                level.block.append(ResnetBlock(in_channels=block_in, out_channels=block_out, dropout=dropout))
                block_in = block_out
                if res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i_level != self.num_resolutions - 1:
                level.downsample = Downsample(block_in, resamp_with_conv)
                res //= 2
            self.down.append(level)
        self.mid = _Middle(block_in, dropout)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i_level, level in enumerate(self.down):
            for i in range(self.num_res_blocks):
                h = _run_level(level, h, i)
            if i_level != self.num_resolutions - 1:
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (B, z_channels, h, w) → image (B, out_ch, h·f, w·f), in [-1, 1] for a trained model."""

    def __init__(self, *, ch: int, out_ch: int, ch_mult: tuple[int, ...] = (1, 2, 4, 8), num_res_blocks: int,
                 attn_resolutions: tuple[int, ...], dropout: float = 0.0, resamp_with_conv: bool = True,
                 in_channels: int, resolution: int, z_channels: int, give_pre_end: bool = False,
                 **ignore: Any) -> None:
        super().__init__()
        self.ch, self.temb_ch = ch, 0
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.resolution, self.in_channels, self.give_pre_end = resolution, in_channels, give_pre_end
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (self.num_resolutions - 1)
        self.z_shape = (1, z_channels, res, res)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = _Middle(block_in, dropout)
        levels: list[_Level] = []
        for i_level in reversed(range(self.num_resolutions)):
            level = _Level()
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(in_channels=block_in, out_channels=block_out, dropout=dropout))
                block_in = block_out
                if res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i_level != 0:
                level.upsample = Upsample(block_in, resamp_with_conv)
                res *= 2
            levels.insert(0, level)  # indexed by level, as taming's ``self.up.insert(0, up)``
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.last_z_shape = z.shape
        h = self.mid(self.conv_in(z))
        for i_level in reversed(range(self.num_resolutions)):
            level = self.up[i_level]
            for i in range(self.num_res_blocks + 1):
                h = _run_level(level, h, i)
            if i_level != 0:
                h = level.upsample(h)
        if self.give_pre_end:
            return h
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer2(nn.Module):
    """Nearest-codebook-entry quantization with a straight-through gradient (taming's ``VectorQuantizer2``).

    ``legacy=True`` (taming's default, which its checkpoints were trained with) keeps taming's historical
    placement of ``beta``: ``loss = ‖sg(z_q) − z‖² + β‖z_q − sg(z)‖²`` (the fixed version swaps the terms).
    """

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25, remap: str | None = None,
                 unknown_index: str = "random", sane_index_shape: bool = False, legacy: bool = True) -> None:
        super().__init__()
        if remap is not None:
            raise NotImplementedError("VectorQuantizer2(remap=...) (a codebook subset from an .npy file) is not "
                                      "supported; none of the released VQGANs uses it")
        self.n_e, self.e_dim, self.beta, self.legacy = n_e, e_dim, beta, legacy
        self.remap, self.re_embed, self.sane_index_shape = None, n_e, sane_index_shape
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)

    def nearest(self, z_flat: torch.Tensor) -> torch.Tensor:
        """Index of the closest codebook entry for each row of ``z_flat`` (N, e_dim)."""
        codebook = self.embedding.weight
        d = z_flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * z_flat @ codebook.t()
        return d.argmin(1)

    def forward(self, z: torch.Tensor, temp: float | None = None, rescale_logits: bool = False,
                return_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        if (temp not in (None, 1.0)) or rescale_logits or return_logits:
            raise ValueError("temp/rescale_logits/return_logits exist only for interface compatibility with Gumbel")
        z = z.permute(0, 2, 3, 1).contiguous()
        indices = self.nearest(z.view(-1, self.e_dim))
        z_q = self.embedding(indices).view(z.shape)
        commit, codebook = torch.mean((z_q.detach() - z) ** 2), torch.mean((z_q - z.detach()) ** 2)
        loss = commit + self.beta * codebook if self.legacy else self.beta * commit + codebook
        z_q = z + (z_q - z).detach()  # straight-through estimator
        z_q = z_q.permute(0, 3, 1, 2).contiguous()
        if self.sane_index_shape:
            indices = indices.reshape(z_q.shape[0], z_q.shape[2], z_q.shape[3])
        return z_q, loss, (None, None, indices)

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple[int, ...] | None) -> torch.Tensor:
        z_q = self.embedding(indices)
        return z_q if shape is None else z_q.view(shape).permute(0, 3, 1, 2).contiguous()


class GumbelQuantize(nn.Module):
    """Gumbel-softmax quantization (taming's ``GumbelQuantize``, used by the f8-8192 "Gumbel" VQGAN).

    Logits from a 1×1 ``proj`` pick codebook rows of ``embed``; outside training the sample is hard (one-hot
    forward, soft gradient), as in taming. The sample is random: encoding the same image twice can differ.
    """

    def __init__(self, num_hiddens: int, embedding_dim: int, n_embed: int, straight_through: bool = True,
                 kl_weight: float = 5e-4, temp_init: float = 1.0, use_vqinterface: bool = True,
                 remap: str | None = None, unknown_index: str = "random") -> None:
        super().__init__()
        if remap is not None:
            raise NotImplementedError("GumbelQuantize(remap=...) is not supported; none of the released VQGANs uses it")
        self.embedding_dim, self.n_embed = embedding_dim, n_embed
        self.straight_through, self.temperature, self.kl_weight = straight_through, temp_init, kl_weight
        self.use_vqinterface, self.remap, self.re_embed = use_vqinterface, None, n_embed
        self.proj = nn.Conv2d(num_hiddens, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embedding_dim)

    def forward(self, z: torch.Tensor, temp: float | None = None, return_logits: bool = False) -> tuple:
        hard = self.straight_through if self.training else True
        logits = self.proj(z)
        soft_one_hot = F.gumbel_softmax(logits, tau=self.temperature if temp is None else temp, dim=1, hard=hard)
        z_q = torch.einsum("bnhw,nd->bdhw", soft_one_hot, self.embed.weight)
        qy = F.softmax(logits, dim=1)
        diff = self.kl_weight * torch.sum(qy * torch.log(qy * self.n_embed + 1e-10), dim=1).mean()
        indices = soft_one_hot.argmax(dim=1)
        if not self.use_vqinterface:
            return z_q, diff, indices
        return (z_q, diff, (None, None, indices), logits) if return_logits else (z_q, diff, (None, None, indices))

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
        b, h, w, _ = shape
        one_hot = F.one_hot(indices.view(b, h, w), num_classes=self.n_embed).permute(0, 3, 1, 2).float()
        return torch.einsum("bnhw,nd->bdhw", one_hot, self.embed.weight)
