"""HARP (Seo et al., 2022, "HARP: Autoregressive Latent Video Prediction with High-Fidelity Image
Generator"): per-frame image VQ-GAN codes (`frame_vqgan`, which can be pretrained on images) and a
causal VideoGPT-style transformer over them.

The network is VideoGPT's prior exactly (`argen.models.video.videogpt`, subclassed: same layout,
same likelihood, same cached sampler); HARP differs in what the paper found to help:

- top-k sampling by default: `sample_top_k` (None: off) is this model's declared
  `sampling_defaults`, used when the caller gives no `SamplingConfig` (keywords override it, an
  explicit config replaces it). The default 10 is a CPU-sized choice for a 256-code tokenizer, not
  a value taken from the paper: tune it per codebook.
- random-crop augmentation in training: each clip of a training batch is shifted in space by
  (dy, dx), each uniform in [-crop, crop] code cells (torch's RNG), the same shift for all its
  frames, the cells shifted in from outside replicating the border (pad by replicate, crop back).
  For a convolutional tokenizer of stride f this is the code volume of the clip's pixels cropped
  at an offset of (dy * f, dx * f) (replicate-padded), exactly so away from the border cells
  (whose receptive field reaches the padding): a pixel crop by multiples of the stride, without
  re-encoding. Only `loss` in training mode sees it; `log_prob`, `conditionals` and sampling are
  the unaugmented model's (so evaluation and likelihoods are unaffected).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from argen.fields import spec
from argen.models.video.videogpt import VideoGPT, VideoGPTConfig
from argen.registry import register_model


@dataclass
class HarpConfig(VideoGPTConfig):
    # the most code cells a training clip is shifted by along h and w (0: no augmentation)
    crop: int = spec(1, ge=0)
    sample_top_k: int | None = spec(10, ge=1)  # top-k when sampling without a config (None: all values)

    def validate(self) -> None:
        super().validate()
        _, _, h, w = self.video_shape
        if self.crop and self.crop >= min(h, w):
            raise ValueError(f"model.crop must be smaller than the code grid (h, w) = ({h}, {w}): expected "
                             f"crop < {min(h, w)}, given {self.crop}")


def shift_codes(x: Tensor, crop: int, generator: torch.Generator | None = None) -> Tensor:
    """x (B, t, s, h, w) with each clip shifted by its own (dy, dx) in [-crop, crop]^2, drawn from
    torch's RNG (or `generator`), the border cells replicated: out[..., i, j] = x[..., clamp(i + dy),
    clamp(j + dx)]."""
    b, t, s, h, w = x.shape
    dy = torch.randint(-crop, crop + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(-crop, crop + 1, (b,), generator=generator).to(x.device)
    rows = (torch.arange(h, device=x.device) + dy[:, None]).clamp(0, h - 1)  # (B, h)
    cols = (torch.arange(w, device=x.device) + dx[:, None]).clamp(0, w - 1)  # (B, w)
    x = torch.gather(x, 3, rows[:, None, None, :, None].expand(b, t, s, h, w))
    return torch.gather(x, 4, cols[:, None, None, None, :].expand(b, t, s, h, w))


@register_model(
    "harp",
    tiny=dict(d_model=12, n_layers=2, n_heads=2, d_ff=24, zero_head=False, crop=1),
    variants={"cross": dict(context_frames=1, enc_layers=1)},
    modality="video",
)
class Harp(VideoGPT):
    """HARP: VideoGPT's prior over per-frame VQ-GAN codes, top-k sampling and random-crop augmentation."""

    config_class = HarpConfig
    config: HarpConfig

    @property
    def sampling_defaults(self) -> dict[str, Any]:
        k = self.config.sample_top_k
        return {} if k is None else {"top_k": k}

    def augment(self, x: Tensor) -> Tensor:
        """The training input: x shifted by up to `crop` code cells (module doc); x itself in eval
        mode or with crop 0."""
        if not self.training or not self.config.crop:
            return x
        return shift_codes(x, self.config.crop)

    def loss(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Mean nats per code of the augmented clips (training) or of x (eval)."""
        return super().loss(self.augment(x), cond)


__all__ = ["Harp", "HarpConfig", "shift_codes"]
