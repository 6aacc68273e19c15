"""A two-level per-frame VQ-VAE (VQ-VAE-2, Razavi et al. 2019; the tokenizer of Walker et al.'s
video prediction): the prior `vqvae_video_pixelcnn` models its codes.

Per frame (a clip's frames are one batch of images):

    h_b = E_b(x)                      bottom features, H/f x W/f (f = 2 ** len(channels))
    z_t = E_t(h_b)                    the top latent, one more stride-2 step: H/2f x W/2f
    q_t = VQ_t(z_t)                   top codes
    z_b = conv1x1([h_b, D_t(q_t)])    the decoded top fed to the bottom's quantizer (VQ-VAE-2)
    q_b = VQ_b(z_b)                   bottom codes
    x_hat = D([q_b, up(q_t)])         the decoder reads both levels

E_b / D are the image tokenizers' conv encoder / decoder (`argen.nn.autoencoder`), E_t / D_t the
same with one stride-2 step, `up` a 4x4 stride-2 transposed convolution; VQ_t and VQ_b are EMA
vector quantizers (`argen.nn.quantize.VectorQuantizer`: data initialisation, dead-code restarts)
with the same codebook size. Loss: reconstruction + beta x (commitment_top + commitment_bottom).

Codes are packed over the top grid (`pack_levels`): (B, T, 5, H/2f, W/2f), channel 0 the top
code, channels 1..4 the bottom codes of that top cell's 2x2 block in raster order, all in
[0, codebook_size). Defaults: 32x32 frames -> bottom 8x8, top 4x4, 128 codes of dim 16.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from argen.fields import spec
from argen.nn.autoencoder import ConvDecoder, ConvEncoder, downsampling_factor
from argen.nn.pixels import mean_stat, one_stat, to_levels, to_unit
from argen.nn.quantize import Quantized, VectorQuantizer, perplexity
from argen.tokenizers.base import Stats, VideoTokenizer, VideoTokenizerConfig, register_tokenizer
from argen.tokenizers.vqvae import MAX_CODES

#: code channels per top cell: the top code and the 2x2 bottom block
LEVEL_CHANNELS = 5
LEVELS = ("top", "bottom")

TINY = dict(channels=(16,), res_blocks=1, res_channels=8, top_channels=16, code_dim=8, codebook_size=32)


def pack_levels(top: Tensor, bottom: Tensor) -> Tensor:
    """top (N, h, w) and bottom (N, 2h, 2w) codes -> (N, 5, h, w): channel 0 the top code, 1..4 the
    bottom codes of the top cell's 2x2 block in raster order."""
    n, h, w = top.shape
    if tuple(bottom.shape) != (n, 2 * h, 2 * w):
        raise ValueError(f"expected bottom codes of shape {(n, 2 * h, 2 * w)} for top codes {(n, h, w)}, "
                         f"given {tuple(bottom.shape)}")
    return torch.cat([top[:, None], rearrange(bottom, "n (i a) (j b) -> n (a b) i j", a=2, b=2)], dim=1)


def unpack_levels(codes: Tensor) -> tuple[Tensor, Tensor]:
    """(N, 5, h, w) packed codes -> (top (N, h, w), bottom (N, 2h, 2w)); the inverse of `pack_levels`."""
    if codes.dim() != 4 or codes.shape[1] != LEVEL_CHANNELS:
        raise ValueError(f"expected packed codes (N, {LEVEL_CHANNELS}, h, w), given {tuple(codes.shape)}")
    return codes[:, 0], rearrange(codes[:, 1:], "n (a b) i j -> n (i a) (j b)", a=2, b=2)


@dataclass
class HVQVAEConfig(VideoTokenizerConfig):
    channels: tuple[int, ...] = spec((32, 64), ge=1, min_len=1)  # the bottom encoder: one stride-2 conv each
    res_blocks: int = spec(2, ge=0)
    res_channels: int = spec(32, ge=1)
    top_channels: int = spec(64, ge=1)  # the top encoder's stride-2 conv (and the top decoder's)
    code_dim: int = spec(16, ge=1)
    codebook_size: int = spec(128, ge=2, le=MAX_CODES)  # both levels (one value range)
    commitment: float = spec(0.25, ge=0)  # beta, on the encoder term of each level
    ema_decay: float = spec(0.99, gt=0, lt=1)
    restart_threshold: float = spec(1.0, ge=0)  # restart codes whose EMA count falls below; 0: never
    recon_loss: str = spec("l2", choices=("l2", "l1"))  # on pixels scaled to [-1, 1]
    usage_window: int = spec(65536, ge=1)  # training assignments behind "window_usage"

    def validate(self) -> None:
        super().validate()
        f = 2 * downsampling_factor(self.channels)
        _, _, h, w = self.video_shape
        if h % f or w % f:
            raise ValueError(f"tokenizer.video_shape: frame height and width must be divisible by {f} (the top "
                             f"level's factor, 2 * 2 ** len(channels), channels={self.channels}), given {h}x{w}")


@register_tokenizer("hvqvae", tiny=TINY)
class HVQVAE(VideoTokenizer):
    """Two-level per-frame VQ-VAE (VQ-VAE-2): top and bottom EMA codebooks, codes packed (B, T, 5, h, w)."""

    config_class = HVQVAEConfig
    config: HVQVAEConfig
    has_training_stats = True

    def __init__(self, config: HVQVAEConfig) -> None:
        super().__init__(config)
        cfg, d = config, config.code_dim
        c = cfg.video_shape[1]
        self.bottom_encoder = ConvEncoder(c, cfg.channels, cfg.res_blocks, cfg.res_channels, d)
        self.top_encoder = ConvEncoder(d, (cfg.top_channels,), cfg.res_blocks, cfg.res_channels, d)
        self.top_decoder = ConvDecoder(d, (cfg.top_channels,), cfg.res_blocks, cfg.res_channels, d)
        self.bottom_in = nn.Conv2d(2 * d, d, 1)
        self.upsample = nn.ConvTranspose2d(d, d, 4, stride=2, padding=1)
        self.decoder = ConvDecoder(c, cfg.channels, cfg.res_blocks, cfg.res_channels, 2 * d)
        self.quantizers = nn.ModuleDict({
            level: VectorQuantizer(cfg.codebook_size, d, beta=cfg.commitment, decay=cfg.ema_decay,
                                   restart_threshold=cfg.restart_threshold, usage_window=cfg.usage_window)
            for level in LEVELS})

    # ----- facts -----------------------------------------------------------------------------
    @property
    def code_shape(self) -> tuple[int, int, int, int]:
        f = 2 * downsampling_factor(self.config.channels)
        t, _, h, w = self.video_shape
        return t, LEVEL_CHANNELS, h // f, w // f

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    # ----- the network ----------------------------------------------------------------------------
    def _levels(self, frames: Tensor, train: bool) -> tuple[Quantized, Quantized] | tuple[Tensor, Tensor]:
        """Frames (N, C, H, W) on the [-1, 1] scale -> both levels' `Quantized` (train) or codes."""
        h_b = self.bottom_encoder(frames)
        z_t = self.top_encoder(h_b)
        top = self.quantizers["top"]
        if train:
            q_t = top(z_t)
            q_b = self.quantizers["bottom"](self.bottom_in(torch.cat([h_b, self.top_decoder(q_t.z_q)], 1)))
            return q_t, q_b
        top_codes = top.encode(z_t)
        z_b = self.bottom_in(torch.cat([h_b, self.top_decoder(top.indices_to_latent(top_codes))], 1))
        return top_codes, self.quantizers["bottom"].encode(z_b)

    def _decode_latents(self, z_t: Tensor, z_b: Tensor) -> Tensor:
        return self.decoder(torch.cat([z_b, self.upsample(z_t)], 1))

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        self.check_input(x)
        b, t = x.shape[:2]
        top, bottom = self._levels(to_unit(x.flatten(0, 1), self.levels), train=False)
        return pack_levels(top, bottom).unflatten(0, (b, t))

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        self.check_codes(codes)
        b, t = codes.shape[:2]
        top, bottom = unpack_levels(codes.flatten(0, 1))
        z_t = self.quantizers["top"].indices_to_latent(top)
        z_b = self.quantizers["bottom"].indices_to_latent(bottom)
        return to_levels(self._decode_latents(z_t, z_b), self.levels).unflatten(0, (b, t))

    # ----- training -------------------------------------------------------------------------------
    def phase_loss(self, phase: str, x: Tensor, step: int) -> tuple[Tensor, Stats]:
        """Reconstruction + beta x commitment of both levels; each level's EMA statistics under
        `<name>.top` / `<name>.bottom`."""
        self.check_phase(phase)
        self.check_input(x)
        xf = to_unit(x.flatten(0, 1), self.levels)
        q_t, q_b = self._levels(xf, train=True)
        recon = self._decode_latents(q_t.z_q, q_b.z_q).float()
        rec = F.mse_loss(recon, xf) if self.config.recon_loss == "l2" else F.l1_loss(recon, xf)
        n, dev = xf.shape[0], xf.device
        stats: Stats = {
            "rec_loss": mean_stat(rec, n),
            "rec_mse": mean_stat(((recon.detach() - xf) / 2).pow(2).mean(), n),  # [0, 1] scale
            "dead_restarted": one_stat(sum(q.last_restarted for q in self.quantizers.values()), dev),
        }
        for level, q in zip(LEVELS, (q_t, q_b)):
            stats[f"commit_{level}"] = mean_stat(q.commitment, n)
            stats[f"perplexity_{level}"] = one_stat(perplexity(q.counts), dev)
            stats.update({f"{name}.{level}": value for name, value in q.stats.items()})
        return rec + q_t.loss + q_b.loss, stats

    def update_statistics(self, stats: Stats) -> None:
        """Each level's quantizer gets the statistics named `*.<level>`, without the suffix."""
        for level, q in self.quantizers.items():
            suffix = f".{level}"
            q.update_statistics({name[: -len(suffix)]: v for name, v in stats.items() if name.endswith(suffix)})

    def summarize(self, totals: Stats) -> dict[str, float]:
        """The video numbers (mse, psnr, ssim, usage, perplexity over both levels' codes) and each
        level's training-window usage."""
        out = super().summarize(totals)
        for level, q in self.quantizers.items():
            window = q.window_usage()
            if not math.isnan(window):
                out[f"window_usage_{level}"] = window
        return out


__all__ = ["HVQVAEConfig", "HVQVAE", "pack_levels", "unpack_levels", "LEVEL_CHANNELS"]
