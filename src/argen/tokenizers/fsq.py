"""FSQ tokenizer (Mentzer et al. 2023): the conv autoencoder with finite scalar quantization.

The latent has one channel per entry of `fsq_levels`; each is bounded and rounded to its L_i
values, so the codebook is the implicit grid of prod(levels) points ([8, 6, 5]: 240 codes). No
codebook, no codebook or commitment loss, no statistics: the loss is reconstruction alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from argen.fields import spec
from argen.nn.quantize import FSQ
from argen.tokenizers.base import register_tokenizer
from argen.tokenizers.conv import ConvTokenizer, ConvTokenizerConfig
from argen.tokenizers.vqvae import MAX_CODES

TINY = dict(channels=(16,), res_blocks=1, res_channels=8, fsq_levels=(4, 3))


@dataclass
class FSQConfig(ConvTokenizerConfig):
    fsq_levels: tuple[int, ...] = spec((8, 6, 5), ge=2, min_len=1)  # values per latent channel

    def validate(self) -> None:
        super().validate()
        size = math.prod(self.fsq_levels)
        if size > MAX_CODES:
            raise ValueError(f"tokenizer.fsq_levels: the codebook prod(levels) may be at most {MAX_CODES} codes, "
                             f"given {self.fsq_levels} = {size}")


@register_tokenizer("fsq", tiny=TINY)
class FSQTokenizer(ConvTokenizer):
    """FSQ: conv autoencoder with a finite-scalar-quantized bottleneck (no codebook)."""

    config_class = FSQConfig
    config: FSQConfig

    def build_quantizer(self, config: FSQConfig) -> FSQ:  # type: ignore[override]
        return FSQ(config.fsq_levels, usage_window=config.usage_window)
