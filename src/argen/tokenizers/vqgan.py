"""VQ-GAN (Esser et al. 2021): the VQ-VAE plus a PatchGAN discriminator and, optionally, a
perceptual loss.

Two optimizer phases: "model" (encoder, decoder, quantizer) minimises
    rec (L1 by default) + perceptual_weight * perceptual + lambda * (-mean D(x_hat)) + beta * commitment,
and "disc" (the discriminator) minimises the hinge loss 0.5 (relu(1 - D(x)) + relu(1 + D(x_hat))).
lambda = ||grad rec|| / (||grad G|| + 1e-4) at the decoder's last convolution, clamped to
[0, 1e4], times `disc_weight` (0.8), detached and logged as "adaptive_weight". Before
`disc_start` there is no adversarial term and no "disc" phase (the GAN would wreck an
untrained autoencoder). The perceptual term exists only when `perceptual_weights` names a local
weights file: nothing is ever downloaded.

The "disc" phase reuses the detached reconstruction the "model" phase stored for the same batch
at the same step (it recomputes one, without gradient, when there is none).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.fields import spec
from argen.nn.discriminator import PatchDiscriminator, StepStash, adaptive_weight, hinge_d_loss, hinge_g_loss, patch_output_size
from argen.nn.pixels import mean_stat, one_stat, to_unit
from argen.tokenizers.base import Stats, register_tokenizer
from argen.tokenizers.vqvae import TINY as VQVAE_TINY
from argen.tokenizers.vqvae import VQVAE, VQVAEConfig


@dataclass
class VQGANConfig(VQVAEConfig):
    recon_loss: str = spec("l1", choices=("l2", "l1"))
    perceptual_weights: str | None = spec(None)  # a local MnistClassifier weights file; None: no perceptual term
    perceptual_weight: float = spec(1.0, ge=0)
    disc_weight: float = spec(0.8, ge=0)
    disc_start: int = spec(1000, ge=0)  # the first step with the adversarial term and the "disc" phase
    disc_channels: int = spec(32, ge=1)  # taming: 64
    disc_layers: int = spec(2, ge=1)  # taming: 3 (too deep for 28x28)

    def validate(self) -> None:
        super().validate()
        if self.perceptual_weights is not None and not self.perceptual_weights.strip():
            raise ValueError("tokenizer.perceptual_weights: expected the path of a weights file or None, given ''")
        _, h, w = self.image_shape
        if patch_output_size(min(h, w), self.disc_layers) < 1:
            raise ValueError(f"tokenizer.disc_layers: {self.disc_layers} discriminator layers leave no patch of a "
                             f"{h}x{w} image; expected fewer layers or a larger image_shape")


class FeatureDistance(nn.Module):
    """An LPIPS-style perceptual distance: the activations of a frozen feature network at each of
    its stages, unit-normalised over channels, squared differences averaged over positions and
    summed over stages (uniform stage weights; LPIPS's learned ones need LPIPS's weights).

    The network is argen's MNIST feature CNN (`argen.metrics.mnist_net.MnistClassifier`) loaded from
    the given file (e.g. its shipped asset): grey input, so colour images are averaged to grey.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        from argen.metrics.mnist_net import MnistClassifier
        from argen.metrics.weights import load_state_dict_file

        if not os.path.isfile(path):
            raise ValueError(f"tokenizer.perceptual_weights: no weights file at {path!r} (nothing is downloaded)")
        net = MnistClassifier()
        try:
            net.load_state_dict(load_state_dict_file(path))
        except RuntimeError as e:
            raise ValueError(f"tokenizer.perceptual_weights: {path!r} does not hold MnistClassifier weights "
                             f"({' '.join(str(e).split())[:200]})") from None
        self.stages = nn.ModuleList(nn.Sequential(*list(net.body)[max(0, i - 1):i + 1]) for i in (0, 2, 4))
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "FeatureDistance":
        return super().train(False)  # frozen: BatchNorm keeps its running statistics

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Mean distance between image batches a, b (B, C, H, W) on the [-1, 1] scale."""
        h = torch.cat([a.mean(1, keepdim=True), b.mean(1, keepdim=True)]).float()
        total = h.new_zeros(())
        for stage in self.stages:
            h = stage(h)
            fa, fb = F.normalize(h, dim=1, eps=1e-10).chunk(2)
            total = total + (fa - fb).pow(2).sum(1).mean()
        return total


@register_tokenizer("vqgan", tiny={**VQVAE_TINY, "disc_channels": 8, "disc_layers": 1, "disc_start": 10})
class VQGAN(VQVAE):
    """VQ-GAN: VQ-VAE + PatchGAN discriminator (hinge loss, adaptive weight), optional perceptual loss."""

    config_class = VQGANConfig
    config: VQGANConfig
    optimizer_phases = ("model", "disc")

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__(config)
        self.discriminator = PatchDiscriminator(config.image_shape[0], config.disc_channels, config.disc_layers)
        # not submodules: the perceptual net is frozen, loaded lazily (a checkpoint never needs
        # the file) and never saved; the stored reconstructions are this step's, for the "disc" phase
        self._perceptual: list[FeatureDistance] = []
        self._stash = StepStash()

    def training_phases(self, step: int) -> tuple[str, ...]:
        return ("model", "disc") if step >= self.config.disc_start else ("model",)

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        self.check_phase(phase)
        disc = {id(p) for p in self.discriminator.parameters()}
        if phase == "disc":
            return list(self.discriminator.parameters())
        return [p for p in self.parameters() if id(p) not in disc]

    def perceptual(self, a: Tensor, b: Tensor) -> Tensor | None:
        """The perceptual distance, or None when no weights file was given."""
        path = self.config.perceptual_weights
        if path is None:
            return None
        if not self._perceptual:
            self._perceptual.append(FeatureDistance(path))
        net = self._perceptual[0].to(a.device)
        self._perceptual[0] = net
        return net(a, b)

    def phase_loss(self, phase: str, x: Tensor, step: int) -> tuple[Tensor, Stats]:
        self.check_phase(phase)
        if phase == "disc":
            return self._disc_loss(x, step)
        xf, recon, q = self(x)
        rec = self.reconstruction_loss(recon, xf)
        stats = self.model_stats(x, xf, recon, rec, q)
        nll = rec
        perc = self.perceptual(recon.float(), xf)
        if perc is not None:
            nll = nll + self.config.perceptual_weight * perc
            stats["perceptual"] = mean_stat(perc, x.shape[0])
        loss = nll + q.loss
        g_loss, weight = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
        if step >= self.config.disc_start:
            g_loss = hinge_g_loss(self.discriminator(recon.float()))
            if torch.is_grad_enabled():
                weight = adaptive_weight(nll, g_loss, self.decoder.last_layer, self.config.disc_weight)
            else:
                weight = torch.tensor(self.config.disc_weight, device=x.device)
            loss = loss + weight * g_loss
        stats["g_loss"] = mean_stat(g_loss, x.shape[0])
        stats["adaptive_weight"] = one_stat(weight, x.device)
        if step >= self.config.disc_start:  # only the discriminator phase reads it
            self._stash.put(step, x, xf, recon.detach().float())
        return loss, stats

    def _disc_loss(self, x: Tensor, step: int) -> tuple[Tensor, Stats]:
        pair = self._stash.get(x, step)
        if pair is None:
            with torch.no_grad():
                xf, recon = self._plain_pass(x)
        else:
            xf, recon = pair
        logits_real = self.discriminator(xf)
        logits_fake = self.discriminator(recon)
        d_loss = hinge_d_loss(logits_real, logits_fake)
        n = x.shape[0]
        return d_loss, {"d_loss": mean_stat(d_loss, n), "logits_real": mean_stat(logits_real.mean(), n),
                        "logits_fake": mean_stat(logits_fake.mean(), n)}

    def _plain_pass(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x on the [-1, 1] scale and its reconstruction, recording nothing (no quantizer statistics)."""
        self.check_input(x)
        xf = to_unit(x, self.levels)
        recon = self.decoder(self.quantizer.indices_to_latent(self.quantizer.encode(self.encoder(xf))))
        return xf, recon.float()
