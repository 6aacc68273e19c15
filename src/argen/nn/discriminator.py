"""PatchGAN discriminator (pix2pix; VQ-GAN's adversarial loss) and the hinge losses.

Layout with `layers` = n: a 4x4 stride-2 convolution to `channels`, n-1 more 4x4 stride-2
convolutions doubling the width (up to 8x), one 4x4 stride-1 convolution, and a 4x4 stride-1
convolution to one logit per patch; LeakyReLU 0.2 and weights drawn from N(0, 0.02). Taming uses
n = 3 and 64 channels; 28x28 digits take n = 2 and 32 channels (a 5x5 map of patch logits).

Normalisation is GroupNorm, not taming's BatchNorm: BatchNorm's running statistics are buffers
that differ between DDP ranks (and between the real and the fake batch, which D then tells apart
by their batch statistics rather than their content), and its train/eval behaviour differs;
GroupNorm normalises each example on its own, so D's output does not depend on the batch and
every rank holds the same weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0 and channels // g >= 2:
            return g
    return 1


def patch_output_size(size: int, layers: int) -> int:
    """Side of the patch-logit map for an input side `size` (< 1: the image is too small)."""
    for _ in range(layers):
        size = (size + 2 - 4) // 2 + 1
    return size - 2  # two 4x4 stride-1 convolutions with padding 1 take one each


class PatchDiscriminator(nn.Module):
    """(B, C, H, W) images in [-1, 1] -> (B, 1, h', w') logits, one per overlapping patch."""

    def __init__(self, in_channels: int, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for n in range(1, layers + 1):
            out = channels * min(2 ** n, 8)
            stride = 2 if n < layers else 1
            mods += [nn.Conv2d(width, out, 4, stride=stride, padding=1, bias=False), nn.GroupNorm(_groups(out), out),
                     nn.LeakyReLU(0.2)]
            width = out
        mods.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*mods)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))): the discriminator's hinge loss."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """-mean D(x_hat): the generator's (decoder's) adversarial loss."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, disc_weight: float,
                    max_weight: float = 1e4) -> Tensor:
    """VQ-GAN's balance of the adversarial term: ||grad rec|| / (||grad G|| + 1e-4) at `last_layer`
    (the decoder's output convolution), clamped to [0, max_weight], times `disc_weight`; detached.

    Both gradients are taken with `torch.autograd.grad(retain_graph=True)`, so the caller's
    backward pass afterwards still works and no `.grad` is touched.
    """
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0].float()
    g_adv = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0].float()
    rec_norm, adv_norm = g_rec.norm(), g_adv.norm()
    weight = (rec_norm / (adv_norm + 1e-4)).clamp(0.0, max_weight)
    # a gradient that underflowed (fp16) or overflowed says nothing: no adversarial term this step,
    # rather than the clamp's maximum weight
    usable = torch.isfinite(rec_norm) & torch.isfinite(adv_norm) & (adv_norm > 0)
    return (torch.where(usable, weight, torch.zeros_like(weight)) * disc_weight).detach()


class StepStash:
    """What a generator phase computed on each micro-batch of one training step, kept for the
    discriminator phase of the same step (the trainer runs the phases in order on the same
    micro-batches), so the discriminator reads detached outputs instead of rerunning the
    generator. Not a module: nothing is saved; a new step forgets the old one."""

    def __init__(self) -> None:
        self._step: int = -1
        self._kept: list[tuple[Tensor, tuple[Tensor, ...]]] = []

    def put(self, step: int, x: Tensor, *values: Tensor) -> None:
        if step != self._step:
            self._step, self._kept = step, []
        self._kept.append((x, values))

    def get(self, x: Tensor, step: int) -> tuple[Tensor, ...] | None:
        """The values put for this batch `x` at `step` (the same tensor or an equal one), or None."""
        if step != self._step:
            return None
        for x0, values in self._kept:
            if x0 is x or (x0.shape == x.shape and x0.device == x.device and torch.equal(x0, x)):
                return values
        return None
