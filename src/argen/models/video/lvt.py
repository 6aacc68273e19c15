"""Latent Video Transformer (Rakhimov et al., 2020, "Latent Video Transformer"): the Video
Transformer (`argen.models.video.video_transformer`, subclassed, nothing copied) as a prior over a
per-frame sliced-VQ tokenizer's latents (`sliced_vqvae`).

The latents of a clip are a code volume (t, S, h, w): S slices of the code vector at every
position, each with its own codebook (LVT: 4 slices of 512 codes). `video_shape` = (t, S, h, w)
and `levels` = the codebook size; the S code channels of a position are predicted in sequence,
one after another, which is the Video Transformer's channel-innermost order already (each channel
its own step, per-channel value tables), so channel c of a position sees channels < c there.

LVT's settings for latents, as the config's defaults:
- generation order: subscale (4, 2, 2) over (t, h, w) (`subscale`); frame by frame is
  subscale (t, 1, 1) (each slice one whole code frame, so a frame is finished before the next);
- a 512-code codebook per slice, 4 slices (levels 512, S = 4);
- temperature 0.9 when sampling without a config (`sample_temperature`, the declared
  `sampling_defaults`; keywords override it, an explicit `SamplingConfig` replaces it).
What the port keeps and drops of the Video Transformer is said in video_transformer.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from argen.distributions import MAX_LEVELS
from argen.fields import spec
from argen.models.video.video_transformer import VideoTransformer, VideoTransformerConfig
from argen.registry import register_model


@dataclass
class LVTConfig(VideoTransformerConfig):
    # LVT's latents at CPU size: 10 code frames of 8 x 8 positions, 4 slices of 512 codes
    video_shape: tuple[int, int, int, int] = spec((10, 4, 8, 8), ge=1)  # (t, S, h, w)
    levels: int = spec(512, ge=2, le=MAX_LEVELS)
    subscale: tuple[int, int, int] = spec((4, 2, 2), ge=1)  # frame by frame: (t, 1, 1)
    sample_temperature: float = spec(0.9, gt=0.0)  # the temperature sampling uses without a config


@register_model(
    "lvt",
    tiny=dict(d_model=16, n_layers=2, n_heads=2, d_ff=32, subscale=(2, 2, 2), block_shapes=(1, 2, 2, 2, 1, 1)),
    variants={"frames": dict(subscale=(3, 1, 1), block_shapes=(1, 4, 4))},
    modality="video",
)
class LVT(VideoTransformer):
    """Latent Video Transformer: the Video Transformer over sliced-VQ latents, slices' codes in sequence, temperature 0.9."""

    config_class = LVTConfig
    config: LVTConfig

    @property
    def sampling_defaults(self) -> dict[str, Any]:
        return {"temperature": self.config.sample_temperature}


__all__ = ["LVT", "LVTConfig"]
