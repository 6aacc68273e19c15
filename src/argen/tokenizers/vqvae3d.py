"""VideoGPT's VQ-VAE (Yan et al. 2021): a 3-D convolutional VQ-VAE with axial attention, for clips.

Encoder: one 4x4x4 convolution per downsampling step (stride 2 along every axis that still has a
factor of 2 to shed, so `downsample=(2, 4, 4)` takes two steps: (2, 2, 2) then (1, 2, 2)), a 3x3x3
convolution, residual blocks (norm, ReLU, 3x3x3 conv to half width, norm, ReLU, 1x1x1 conv back,
norm, ReLU, axial attention along t, h and w summed: `argen.nn.axial`), norm, ReLU, 1x1x1 to the
code dimension. Bottleneck: `argen.nn.quantize.VectorQuantizer` over every (t, h, w) position, an
EMA codebook (decay 0.99) initialised from encoder outputs with dead codes restarted. Decoder: the
mirror image with transposed convolutions. Codes (B, t, 1, h, w), t = T / downsample[0].

Differences from VideoGPT, and why:
- Group normalisation per frame instead of batch normalisation: encode in eval mode matches the
  training pass, there are no running statistics to keep in step across DDP ranks, and a frame's
  statistics never include other frames (needed for the next point).
- `causal=True` (default) pads every temporal convolution on the past side only and masks the
  temporal attention, so code frame j depends on video frames < (j + 1) * frame_stride only:
  encoding the known context frames of a prediction fixes their code frames whatever the unknown
  frames hold (`temporally_causal`). `causal=False` is VideoGPT's symmetric "same" padding.
- Loss: mean squared error on pixels scaled to [-1, 1], times `recon_weight` (1 by default), plus
  0.25 x commitment, argen's VQ-VAE loss. VideoGPT divides the MSE of [-0.5, 0.5] pixels by 0.06
  (the data variance); `recon_weight` = 1 / (4 x 0.06) ~ 4.2 reproduces that balance on this scale.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from argen.fields import spec
from argen.nn.axial import AxialAttention3d
from argen.nn.pixels import mean_stat, one_stat, to_levels, to_unit
from argen.nn.quantize import Quantized, VectorQuantizer, perplexity
from argen.tokenizers.base import Stats, VideoTokenizer, VideoTokenizerConfig, register_tokenizer
from argen.tokenizers.vqvae import MAX_CODES

TINY = dict(hidden=8, res_blocks=1, heads=2, code_dim=4, codebook_size=32, downsample=(2, 2, 2))


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def downsampling_steps(downsample: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """Per-step strides: (2, 4, 4) -> [(2, 2, 2), (1, 2, 2)]; one step per factor of 2 of the largest axis."""
    n = max(int(math.log2(d)) for d in downsample)
    return [tuple(2 if 2 ** (i + 1) <= d else 1 for d in downsample) for i in range(n)]  # type: ignore[misc]


@dataclass
class VQVAE3DConfig(VideoTokenizerConfig):
    downsample: tuple[int, int, int] = spec((2, 4, 4), ge=1)  # (t, h, w) factors, each a power of 2
    hidden: int = spec(64, ge=2)  # channels of the conv trunk
    res_blocks: int = spec(2, ge=0)
    heads: int = spec(2, ge=1)  # axial attention heads (hidden % heads == 0)
    attention: bool = spec(True)  # False: plain residual blocks (no axial attention)
    causal: bool = spec(True)  # temporally causal encoder (see the module doc)
    code_dim: int = spec(32, ge=1)
    codebook_size: int = spec(256, ge=2, le=MAX_CODES)
    commitment: float = spec(0.25, ge=0)  # beta, on the encoder term
    recon_weight: float = spec(1.0, gt=0)  # the MSE's weight (VideoGPT's balance: ~4.2, see the module doc)
    ema_decay: float = spec(0.99, gt=0, lt=1)
    restart_threshold: float = spec(1.0, ge=0)  # restart codes whose EMA count falls below; 0: never
    usage_window: int = spec(65536, ge=1)  # training assignments behind "window_usage"

    def validate(self) -> None:
        super().validate()
        if len(self.downsample) != 3 or not all(_is_power_of_two(d) for d in self.downsample):
            raise ValueError(f"tokenizer.downsample must be three powers of 2 (t, h, w), given {self.downsample}")
        t, _, h, w = self.video_shape
        for axis, size, d in zip("THW", (t, h, w), self.downsample):
            if size % d:
                raise ValueError(f"tokenizer.video_shape: {axis} = {size} must be divisible by its downsampling "
                                 f"factor {d} (downsample={self.downsample})")
        if self.hidden % self.heads:
            raise ValueError(f"tokenizer.hidden ({self.hidden}) must be divisible by tokenizer.heads, "
                             f"given heads={self.heads}")


class FrameNorm(nn.Module):
    """Group normalisation of each frame on its own: (B, C, T, H, W), statistics over (C/g, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(math.gcd(channels, 8), channels)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        y = self.norm(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(y, "(b t) c h w -> b c t h w", b=b)


class PaddedConv3d(nn.Module):
    """A 3-D convolution with "same" padding (k - s per axis, VideoGPT's), the temporal padding on the
    past side only when `causal`: output frame i then sees input frames <= s * i + s - 1."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: tuple[int, int, int] = (1, 1, 1),
                 causal: bool = False) -> None:
        super().__init__()
        pads = [kernel - s for s in stride]  # t, h, w
        pt, ph, pw = pads
        t_pad = (pt, 0) if causal else (pt - pt // 2, pt // 2)
        self.pad = (pw - pw // 2, pw // 2, ph - ph // 2, ph // 2, *t_pad)  # F.pad order: w, h, t
        self.conv = nn.Conv3d(cin, cout, kernel, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.pad))


class AttentionResidualBlock(nn.Module):
    """x + axial_attention(relu(norm(conv1(relu(norm(conv3(relu(norm(x))))))))), VideoGPT's block."""

    def __init__(self, channels: int, heads: int, attention: bool, causal: bool) -> None:
        super().__init__()
        mid = max(1, channels // 2)
        layers: list[nn.Module] = [FrameNorm(channels), nn.ReLU(), PaddedConv3d(channels, mid, 3, causal=causal),
                                   FrameNorm(mid), nn.ReLU(), PaddedConv3d(mid, channels, 1, causal=causal)]
        if attention:
            layers += [FrameNorm(channels), nn.ReLU(), AxialAttention3d(channels, heads, causal_time=causal)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class Encoder3d(nn.Module):
    """(B, C, T, H, W) floats -> (B, code_dim, t, h, w)."""

    def __init__(self, cfg: VQVAE3DConfig) -> None:
        super().__init__()
        c, hid, causal = cfg.video_shape[1], cfg.hidden, cfg.causal
        layers: list[nn.Module] = []
        cin = c
        for stride in downsampling_steps(cfg.downsample):
            layers += [PaddedConv3d(cin, hid, 4, stride, causal=causal), nn.ReLU()]
            cin = hid
        layers.append(PaddedConv3d(cin, hid, 3, causal=causal))
        layers += [AttentionResidualBlock(hid, cfg.heads, cfg.attention, causal) for _ in range(cfg.res_blocks)]
        layers += [FrameNorm(hid), nn.ReLU(), nn.Conv3d(hid, cfg.code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder3d(nn.Module):
    """(B, code_dim, t, h, w) -> (B, C, T, H, W) floats (raw: the loss sees them unsquashed)."""

    def __init__(self, cfg: VQVAE3DConfig) -> None:
        super().__init__()
        c, hid = cfg.video_shape[1], cfg.hidden
        layers: list[nn.Module] = [nn.Conv3d(cfg.code_dim, hid, 1)]
        layers += [AttentionResidualBlock(hid, cfg.heads, cfg.attention, False) for _ in range(cfg.res_blocks)]
        layers += [FrameNorm(hid), nn.ReLU()]
        steps = downsampling_steps(cfg.downsample)[::-1]
        for i, stride in enumerate(steps):
            last = i == len(steps) - 1
            # kernel 4 / padding 1 doubles an axis (stride 2); kernel 3 / padding 1 keeps it (stride 1)
            kernel = tuple(4 if s == 2 else 3 for s in stride)
            layers.append(nn.ConvTranspose3d(hid, c if last else hid, kernel, stride=stride, padding=1))
            if not last:
                layers.append(nn.ReLU())
        if not steps:
            layers.append(nn.Conv3d(hid, c, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


@register_tokenizer("vqvae3d", tiny=TINY)
class VQVAE3D(VideoTokenizer):
    """VideoGPT's VQ-VAE: 3-D conv encoder / decoder with axial attention and an EMA codebook."""

    config_class = VQVAE3DConfig
    config: VQVAE3DConfig
    has_training_stats = True

    def __init__(self, config: VQVAE3DConfig) -> None:
        super().__init__(config)
        cfg = config
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.code_dim, beta=cfg.commitment, decay=cfg.ema_decay,
                                         restart_threshold=cfg.restart_threshold, usage_window=cfg.usage_window)
        self.encoder = Encoder3d(cfg)
        self.decoder = Decoder3d(cfg)

    # ----- facts -----------------------------------------------------------------------------
    @property
    def code_shape(self) -> tuple[int, int, int, int]:
        t, _, h, w = self.video_shape
        dt, dh, dw = self.config.downsample
        return t // dt, 1, h // dh, w // dw

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def frame_stride(self) -> int:
        return self.config.downsample[0]

    @property
    def temporally_causal(self) -> bool:
        return self.config.causal

    # ----- encode / decode ----------------------------------------------------------------------
    def latent(self, x: Tensor) -> Tensor:
        """The encoder's output (B, code_dim, t, h, w) for clips x (B, T, C, H, W) long (checked)."""
        self.check_input(x)
        return self.encoder(rearrange(to_unit(x, self.levels), "b t c h w -> b c t h w"))

    def reconstruct_latent(self, z_q: Tensor) -> Tensor:
        """Decoder output (B, T, C, H, W) on the [-1, 1] scale (unclamped) of a quantized latent."""
        return rearrange(self.decoder(z_q), "b c t h w -> b t c h w")

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        return self.quantizer.encode(self.latent(x)).unsqueeze(2)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        self.check_codes(codes)
        z_q = self.quantizer.indices_to_latent(codes[:, :, 0])  # (B, D, t, h, w)
        return to_levels(self.reconstruct_latent(z_q), self.levels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Quantized]:
        """The training pass: (x on the [-1, 1] scale, its reconstruction there, the quantizer's output)."""
        q = self.quantizer(self.latent(x))
        return to_unit(x, self.levels), self.reconstruct_latent(q.z_q), q

    # ----- training ------------------------------------------------------------------------------
    def phase_loss(self, phase: str, x: Tensor, step: int) -> tuple[Tensor, Stats]:
        """recon_weight x MSE (on [-1, 1]) + beta x commitment (the EMA codebook has no loss term)."""
        self.check_phase(phase)
        xf, recon, q = self(x)
        rec = F.mse_loss(recon.float(), xf)
        n, dev = x.shape[0], x.device
        stats: Stats = {
            "rec_loss": mean_stat(rec, n),
            "rec_mse": mean_stat(((recon.detach().float() - xf) / 2).pow(2).mean(), n),  # [0, 1] scale
            "commit": mean_stat(q.commitment, n),
            "perplexity": one_stat(perplexity(q.counts), dev),
            "dead_restarted": one_stat(self.quantizer.last_restarted, dev),
        }
        stats.update(q.stats)
        return self.config.recon_weight * rec + q.loss, stats

    def update_statistics(self, stats: Stats) -> None:
        self.quantizer.update_statistics(stats)

    def summarize(self, totals: Stats) -> dict[str, float]:
        """The video tokenizer numbers (mse, psnr, ssim, usage, perplexity) plus window_usage once trained."""
        out = super().summarize(totals)
        window = self.quantizer.window_usage()
        if not math.isnan(window):
            out["window_usage"] = window
        return out
