"""What the convolutional tokenizers share: encoder -> quantizer -> decoder, the pixel scale, the
reconstruction loss, evaluation statistics. VQ-VAE, FSQ and VQ-GAN differ only in the quantizer
they build (and VQ-GAN's adversarial phase); nothing here knows which one it is.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from argen.fields import spec
from argen.nn.autoencoder import ConvDecoder, ConvEncoder, downsampling_factor
from argen.nn.pixels import mean_stat, one_stat, to_levels, to_unit
from argen.nn.quantize import Quantized, Quantizer, perplexity
from argen.tokenizers.base import MAX_PSNR, Stats, Tokenizer, TokenizerConfig, reconstruction_summary  # noqa: F401


@dataclass
class ConvTokenizerConfig(TokenizerConfig):
    """The conv encoder / decoder (argen.nn.autoencoder); the defaults map 28x28 to a 7x7 grid."""

    channels: tuple[int, ...] = spec((32, 64), ge=1, min_len=1)  # one stride-2 conv per entry
    res_blocks: int = spec(2, ge=0)
    res_channels: int = spec(32, ge=1)
    recon_loss: str = spec("l2", choices=("l2", "l1"))  # on pixels scaled to [-1, 1]
    usage_window: int = spec(65536, ge=1)  # training assignments behind "window_usage"

    def validate(self) -> None:
        super().validate()
        f = downsampling_factor(self.channels)
        _, h, w = self.image_shape
        if h % f or w % f:
            raise ValueError(f"tokenizer.image_shape: height and width must be divisible by the downsampling factor "
                             f"{f} (2 ** len(channels), channels={self.channels}), given {h}x{w}")


class ConvTokenizer(Tokenizer):
    """Encoder -> quantizer -> decoder; subclasses supply `build_quantizer`."""

    config_class = ConvTokenizerConfig
    config: ConvTokenizerConfig

    def __init__(self, config: ConvTokenizerConfig) -> None:
        super().__init__(config)
        cfg, c = config, config.image_shape[0]
        self.quantizer = self.build_quantizer(cfg)
        dim = self.quantizer.dim
        self.encoder = ConvEncoder(c, cfg.channels, cfg.res_blocks, cfg.res_channels, dim)
        self.decoder = ConvDecoder(c, cfg.channels, cfg.res_blocks, cfg.res_channels, dim)

    @abc.abstractmethod
    def build_quantizer(self, config: ConvTokenizerConfig) -> Quantizer:
        """The quantizer of this family (called once, by __init__)."""

    # ----- facts -----------------------------------------------------------------------------
    @property
    def code_shape(self) -> tuple[int, int]:
        f = downsampling_factor(self.config.channels)
        _, h, w = self.image_shape
        return h // f, w // f

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    # ----- encode / decode ----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.quantizer.encode(self.encoder(to_unit(x, self.levels)))

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        self.check_codes(codes)
        return to_levels(self.decoder(self.quantizer.indices_to_latent(codes)), self.levels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Quantized]:
        """The training pass: (x on the [-1, 1] scale, its reconstruction there, the quantizer's output)."""
        self.check_input(x)
        xf = to_unit(x, self.levels)
        q = self.quantizer(self.encoder(xf))
        return xf, self.decoder(q.z_q), q

    # ----- training ------------------------------------------------------------------------------
    def reconstruction_loss(self, recon: Tensor, target: Tensor) -> Tensor:
        """Mean L2 or L1 (config `recon_loss`) on the [-1, 1] scale, in fp32."""
        recon = recon.float()
        return F.mse_loss(recon, target) if self.config.recon_loss == "l2" else F.l1_loss(recon, target)

    def model_stats(self, x: Tensor, xf: Tensor, recon: Tensor, rec: Tensor, q: Quantized) -> Stats:
        """The "model" phase's statistics: losses and codebook numbers, plus the quantizer's own."""
        n, dev = x.shape[0], x.device
        stats: Stats = {
            "rec_loss": mean_stat(rec, n),
            "rec_mse": mean_stat(((recon.detach().float() - xf) / 2).pow(2).mean(), n),  # [0, 1] scale
            "commit": mean_stat(q.commitment, n),
            "perplexity": one_stat(perplexity(q.counts), dev),
        }
        if self.quantizer.has_training_stats:
            stats["dead_restarted"] = one_stat(getattr(self.quantizer, "last_restarted", 0), dev)
        stats.update(q.stats)
        return stats

    def phase_loss(self, phase: str, x: Tensor, step: int) -> tuple[Tensor, Stats]:
        """Reconstruction + the quantizer's loss (VQ: beta * commitment; FSQ: none)."""
        self.check_phase(phase)
        xf, recon, q = self(x)
        rec = self.reconstruction_loss(recon, xf)
        return rec + q.loss, self.model_stats(x, xf, recon, rec, q)

    def update_statistics(self, stats: Stats) -> None:
        self.quantizer.update_statistics(stats)

    # ----- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def eval_stats(self, x: Tensor) -> Stats:
        """{"sq_err": (squared error of reconstruct(x) on the [0, 1] scale, number of values),
        "codes": (histogram of the codes (K,), ones)} over one held-out batch."""
        codes = self.encode(x)
        recon = self.decode(codes)
        err = ((recon - x).double() / (self.levels - 1)).pow(2).sum()
        hist = self.quantizer.histogram(codes).double()
        return {"sq_err": (err, torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device)),
                "codes": (hist, torch.ones_like(hist))}

    def summarize(self, totals: Stats) -> dict[str, float]:
        """mse ([0, 1] scale, over every value), psnr (dB, peak 1, of that mse), usage (distinct codes /
        codebook_size), perplexity (of the code histogram), window_usage (recent training assignments;
        absent before any training)."""
        out = reconstruction_summary(totals, self.codebook_size)
        window = self.quantizer.window_usage()
        if not math.isnan(window):
            out["window_usage"] = window
        return out
