"""The convolutional encoder / decoder every image tokenizer shares (VQ-VAE, VQ-GAN, FSQ).

Encoder: one 4x4 stride-2 convolution per entry of `channels` (each halves H and W), residual
blocks at the last width, then a 1x1 convolution to the latent dimension. Decoder: the mirror
image (3x3 convolution from the latent, residual blocks, 4x4 stride-2 transposed convolutions).
The MNIST default, channels (32, 64), 2 residual blocks of 32 hidden channels and a 16-d latent,
maps 28x28 to a 7x7 grid with about 150k parameters (van den Oord et al.'s VQ-VAE, sized down).
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn


def downsampling_factor(channels: Sequence[int]) -> int:
    """How much the encoder shrinks H and W: 2 per stride-2 convolution."""
    return 2 ** len(channels)


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))): the VQ-VAE residual block (no normalisation)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class ConvEncoder(nn.Module):
    """(B, C, H, W) floats -> (B, latent_dim, H/f, W/f), f = 2 ** len(channels)."""

    def __init__(self, in_channels: int, channels: Sequence[int], res_blocks: int, res_channels: int,
                 latent_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, c in enumerate(channels):
            layers.append(nn.Conv2d(cin, c, 4, stride=2, padding=1))
            if i < len(channels) - 1:
                layers.append(nn.ReLU())
            cin = c
        layers += [ResidualBlock(cin, res_channels) for _ in range(res_blocks)]
        layers += [nn.ReLU(), nn.Conv2d(cin, latent_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """(B, latent_dim, h, w) -> (B, C, h*f, w*f) floats (no output squashing: the loss sees raw values)."""

    def __init__(self, out_channels: int, channels: Sequence[int], res_blocks: int, res_channels: int,
                 latent_dim: int) -> None:
        super().__init__()
        widths = list(channels)[::-1]
        layers: list[nn.Module] = [nn.Conv2d(latent_dim, widths[0], 3, padding=1)]
        layers += [ResidualBlock(widths[0], res_channels) for _ in range(res_blocks)]
        for cin, cout in zip(widths, widths[1:] + [out_channels]):
            layers += [nn.ReLU(), nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)]
        self.net = nn.Sequential(*layers)

    @property
    def last_layer(self) -> nn.Parameter:
        """The weight of the output convolution (where VQ-GAN's adaptive weight compares gradients)."""
        return self.net[-1].weight

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
