"""CLIPStyler's StyleNet: the small U-Net that repaints the content image (its output is the stylized image).

The architecture is upstream's (cyclomon/CLIPstyler ``StyleNet.UNet``): every stage is two 3×3
conv–InstanceNorm–ReLU layers plus a 1×1 skip conv, three stride-2 4×4 downsampling convs, bilinear
upsampling with U-Net skips, and a sigmoid output in (0, 1). The module and parameter names match upstream's,
so a state dict saved from one loads into the other. Image sides must be multiples of 8 (three halvings).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["StyleNet", "ResidualConv", "Down", "Up"]


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    def conv_norm_relu(cin: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, out_channels, 3, 1, 1), nn.InstanceNorm2d(out_channels), nn.ReLU()]

    return nn.Sequential(*conv_norm_relu(in_channels), *conv_norm_relu(out_channels))


class ResidualConv(nn.Module):
    """``conv(x) + skip(x)``: two conv–norm–ReLU layers beside a 1×1 projection (upstream's ``EncodingBlock``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = _double_conv(in_channels, out_channels)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.skip(x)


class Down(ResidualConv):
    """A residual stage, then a learned stride-2 downsampling; returns ``(downsampled, features_for_the_skip)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels)
        self.downsample = nn.Conv2d(out_channels, out_channels, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        features = super().forward(x)
        return self.downsample(features), features


class Up(ResidualConv):
    """Bilinear ×2 upsampling, concatenation with the matching ``Down`` features, a residual stage."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels + out_channels, out_channels)
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear")

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(torch.cat([self.upsample(x), skip], dim=1))


class StyleNet(nn.Module):
    """Image → stylized image of the same size. ``ngf`` is the first stage's width (upstream: 16)."""

    def __init__(self, ngf: int = 16, in_channels: int = 3, out_channels: int = 3) -> None:
        super().__init__()
        self.conv_init = nn.Conv2d(in_channels, ngf, 1, 1, 0)
        self.init = ResidualConv(ngf, ngf)
        self.down1, self.down2, self.down3 = Down(ngf, ngf), Down(ngf, 2 * ngf), Down(2 * ngf, 4 * ngf)
        self.encoding = ResidualConv(4 * ngf, 8 * ngf)
        self.up3, self.up2, self.up1 = Up(8 * ngf, 4 * ngf), Up(4 * ngf, 2 * ngf), Up(2 * ngf, ngf)
        self.out = ResidualConv(2 * ngf, ngf)
        self.conv_fin = nn.Conv2d(ngf, out_channels, 1, 1, 0)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor, use_sigmoid: bool = True) -> torch.Tensor:
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"StyleNet needs image sides that are multiples of 8, got {tuple(x.shape[-2:])}")
        x = self.init(self.conv_init(x))
        d1, f1 = self.down1(x)
        d2, f2 = self.down2(d1)
        d3, f3 = self.down3(d2)
        h = self.up1(self.up2(self.up3(self.encoding(d3), f3), f2), f1)
        h = self.conv_fin(self.out(torch.cat([h, x], dim=1)))
        return self.sigmoid(h) if use_sigmoid else h
