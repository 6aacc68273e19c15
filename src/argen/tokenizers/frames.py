"""Per-frame video tokenizers: an image tokenizer applied to every frame of a clip (frame_stride 1).

- `frame_vqgan`: the image VQ-GAN (`argen.tokenizers.vqgan`) per frame, adversarial phase and
  adaptive weight included: HARP's tokenizer (a per-frame VQ-GAN, which can be trained on images).
  Codes (B, T, 1, h, w).
- `sliced_vqvae`: the Latent Video Transformer's VQ-VAE: the image VQ-VAE whose code vector is
  split into S slices, each quantized by its own EMA codebook (`argen.nn.quantize.SlicedQuantizer`).
  Codes (B, T, S, h, w), every slice's codes in [0, codebook_size).

A clip's frames are one batch of images for the frame network (B * T images), so training,
statistics and the VQ-GAN's discriminator are the image tokenizer's, unchanged; this module only
reshapes. A config is the image tokenizer's config with `video_shape` (T, C, H, W) in place of
`image_shape`; `frame_config()` gives the image config of one frame, which the frame network is
built from (and which checks the frame-size rules: divisibility, discriminator depth).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from einops import rearrange
from torch import Tensor, nn

from argen.fields import spec
from argen.nn.pixels import to_unit
from argen.nn.quantize import SlicedQuantizer
from argen.tokenizers.base import Stats, TokenizerConfig, VideoTokenizer, VideoTokenizerConfig, register_tokenizer
from argen.tokenizers.conv import ConvTokenizer
from argen.tokenizers.vqgan import VQGAN, VQGANConfig
from argen.tokenizers.vqvae import TINY as VQVAE_TINY
from argen.tokenizers.vqvae import VQVAE, VQVAEConfig


# ----- configs ---------------------------------------------------------------------------------------
@dataclass
class FrameConfig(VideoTokenizerConfig):
    """A video config over an image tokenizer's fields: `frame_config()` is that tokenizer's config
    for one frame (image_shape = video_shape[1:], every other field copied)."""

    image_config_class: ClassVar[type[TokenizerConfig]] = TokenizerConfig

    def frame_config(self) -> TokenizerConfig:
        names = {f.name for f in dataclasses.fields(self.image_config_class)} - {"image_shape"}
        return self.image_config_class(image_shape=tuple(self.video_shape[1:]),
                                       **{n: getattr(self, n) for n in names})

    def validate(self) -> None:
        super().validate()
        self.frame_config().validate()  # the frame-size rules of the image tokenizer


@dataclass
class FrameVQGANConfig(FrameConfig, VQGANConfig):
    """The image VQ-GAN's fields per frame; default 10 frames of 32x32 -> 10 x 8x8 codes of 128."""

    image_config_class: ClassVar[type[TokenizerConfig]] = VQGANConfig


@dataclass
class SlicedVQVAEImageConfig(VQVAEConfig):
    """The image VQ-VAE with a sliced code vector (LVT: D split into `slices`, one EMA codebook each)."""

    code_dim: int = spec(32, ge=1)  # split into `slices` equal slices
    slices: int = spec(4, ge=1)  # codes per position (LVT: 4)
    commitment: float = spec(1.0, ge=0)  # LVT's beta

    def validate(self) -> None:
        super().validate()
        if self.code_dim % self.slices:
            raise ValueError(f"tokenizer.code_dim must be divisible by tokenizer.slices={self.slices}, "
                             f"given code_dim={self.code_dim}")


@dataclass
class SlicedVQVAEConfig(FrameConfig, SlicedVQVAEImageConfig):
    """LVT's sliced VQ-VAE per frame; default 10 frames of 32x32 -> 10 x 4 x 8x8 codes of 128."""

    image_config_class: ClassVar[type[TokenizerConfig]] = SlicedVQVAEImageConfig


# ----- the frame network of sliced_vqvae ------------------------------------------------------------------
class SlicedVQVAEImage(VQVAE):
    """The image VQ-VAE with a `SlicedQuantizer`: images (B, C, H, W) <-> codes (B, S, h, w).

    Not registered as an image tokenizer (an image tokenizer's codes are (B, h, w)); it is the frame
    network of `sliced_vqvae`, everything but the code layout inherited from the VQ-VAE."""

    config_class = SlicedVQVAEImageConfig
    config: SlicedVQVAEImageConfig

    def build_quantizer(self, config: SlicedVQVAEImageConfig) -> SlicedQuantizer:  # type: ignore[override]
        return SlicedQuantizer(config.slices, config.codebook_size, config.code_dim, usage_window=config.usage_window,
                               beta=config.commitment, decay=config.ema_decay,
                               restart_threshold=config.restart_threshold, l2_normalize=config.l2_normalize,
                               ema=config.ema)

    def check_codes(self, codes: Tensor) -> None:
        """Codes (B, S, h, w) long in [0, codebook_size)."""
        s, (h, w) = self.config.slices, self.code_shape
        if not isinstance(codes, Tensor) or codes.dtype != torch.long or codes.dim() != 4 \
                or tuple(codes.shape[1:]) != (s, h, w):
            given = (codes.dtype, tuple(codes.shape)) if isinstance(codes, Tensor) else type(codes).__name__
            raise ValueError(f"expected codes of dtype torch.long and shape (B, {s}, {h}, {w}), given {given}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"expected codes in [0, {self.codebook_size - 1}], given range "
                             f"[{int(codes.min())}, {int(codes.max())}]")


# ----- the per-frame video tokenizer ----------------------------------------------------------------------
class FrameTokenizer(VideoTokenizer):
    """A video tokenizer that runs `image_class` (a conv image tokenizer) on every frame.

    Subclasses name the image class, copy its `optimizer_phases` and `has_training_stats` (class
    facts the trainer reads), and, when its codes are not one per position, say how they map to the
    (s, h, w) code frame (`_video_codes` / `_image_codes`)."""

    config_class: ClassVar[type[TokenizerConfig]] = FrameConfig
    config: FrameConfig
    image_class: ClassVar[type[ConvTokenizer]]

    def __init__(self, config: FrameConfig) -> None:
        super().__init__(config)
        self.image = self.image_class(config.frame_config())

    # ----- facts -----------------------------------------------------------------------------
    @property
    def codes_per_position(self) -> int:
        return 1

    @property
    def code_shape(self) -> tuple[int, int, int, int]:
        h, w = self.image.code_shape
        return self.video_shape[0], self.codes_per_position, h, w

    @property
    def codebook_size(self) -> int:
        return self.image.codebook_size

    # ----- code layout ---------------------------------------------------------------------------
    def _video_codes(self, codes: Tensor) -> Tensor:
        """The frame network's codes of N frames -> (N, s, h, w)."""
        return codes[:, None]

    def _image_codes(self, codes: Tensor) -> Tensor:
        """(N, s, h, w) -> the frame network's codes of N frames."""
        return codes[:, 0]

    # ----- encode / decode -----------------------------------------------------------------------
    def latent(self, x: Tensor) -> Tensor:
        """(B, D, T, h, w): the frame encoder's latent of clips `x`, before quantization."""
        self.check_input(x)
        b, t = x.shape[:2]
        z = self.image.encoder(to_unit(x.flatten(0, 1), self.levels))
        return rearrange(z, "(b t) d h w -> b d t h w", b=b, t=t)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        self.check_input(x)
        b, t = x.shape[:2]
        return self._video_codes(self.image.encode(x.flatten(0, 1))).unflatten(0, (b, t))

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        self.check_codes(codes)
        b, t = codes.shape[:2]
        return self.image.decode(self._image_codes(codes.flatten(0, 1))).unflatten(0, (b, t))

    # ----- training: the image tokenizer's, on the clip's frames -------------------------------------
    def training_phases(self, step: int) -> tuple[str, ...]:
        return self.image.training_phases(step)

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        return self.image.phase_parameters(phase)

    def phase_loss(self, phase: str, x: Tensor, step: int) -> tuple[Tensor, Stats]:
        """The image tokenizer's loss for `phase` over the B * T frames of clips `x`."""
        self.check_phase(phase)
        self.check_input(x)
        return self.image.phase_loss(phase, x.flatten(0, 1), step)

    def update_statistics(self, stats: Stats) -> None:
        self.image.update_statistics(stats)

    def summarize(self, totals: Stats) -> dict[str, float]:
        """The video numbers (mse, psnr, ssim, usage, perplexity) and the training window's usage."""
        out = super().summarize(totals)
        window = self.image.quantizer.window_usage()
        if window == window:  # not NaN: some training assignments were recorded
            out["window_usage"] = window
        return out

    def extra_repr(self) -> str:
        return f"name={self.model_name!r}, video_shape={self.video_shape}, code_shape={self.code_shape}"


def _frame_tiny(**extra: Any) -> dict[str, Any]:
    return {**VQVAE_TINY, **extra}


@register_tokenizer("frame_vqgan", tiny=_frame_tiny(disc_channels=8, disc_layers=1, disc_start=10))
class FrameVQGAN(FrameTokenizer):
    """HARP's tokenizer: the image VQ-GAN on every frame (codes (B, T, 1, h, w))."""

    config_class = FrameVQGANConfig
    config: FrameVQGANConfig
    image_class = VQGAN
    optimizer_phases = VQGAN.optimizer_phases  # "model", then "disc" from disc_start
    has_training_stats = VQGAN.has_training_stats


@register_tokenizer("sliced_vqvae", tiny=_frame_tiny(code_dim=4, slices=2))
class SlicedVQVAE(FrameTokenizer):
    """LVT's tokenizer: a per-frame VQ-VAE with S sliced EMA codebooks (codes (B, T, S, h, w))."""

    config_class = SlicedVQVAEConfig
    config: SlicedVQVAEConfig
    image_class = SlicedVQVAEImage
    optimizer_phases = SlicedVQVAEImage.optimizer_phases
    has_training_stats = SlicedVQVAEImage.has_training_stats

    @property
    def codes_per_position(self) -> int:
        return self.config.slices

    def _video_codes(self, codes: Tensor) -> Tensor:
        return codes

    def _image_codes(self, codes: Tensor) -> Tensor:
        return codes


__all__ = ["FrameConfig", "FrameVQGANConfig", "SlicedVQVAEImageConfig", "SlicedVQVAEConfig", "SlicedVQVAEImage",
           "FrameTokenizer", "FrameVQGAN", "SlicedVQVAE"]
