"""VQ-VAE (van den Oord et al. 2017) with an EMA codebook (Razavi et al.; VideoGPT's recipe).

Conv encoder / decoder with residual blocks (argen.nn.autoencoder), a vector quantizer whose
codebook follows an exponential moving average of the encoder outputs (decay 0.99), initialised
from data and with dead codes restarted from random encoder outputs; loss = reconstruction +
0.25 x commitment (the codebook term is absent with an EMA codebook; `ema=False` trains the
codebook by gradient instead). `l2_normalize` with a small `code_dim` gives cosine-distance codes.
Defaults: 28x28 -> 7x7 codes of 128 (code dim 16), about 150k parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

from argen.fields import spec
from argen.nn.quantize import VectorQuantizer
from argen.tokenizers.base import register_tokenizer
from argen.tokenizers.conv import ConvTokenizer, ConvTokenizerConfig

#: The most codes a prior over them can take (its `levels`, see argen.distributions.MAX_LEVELS).
MAX_CODES = 65536

TINY = dict(channels=(16,), res_blocks=1, res_channels=8, code_dim=4, codebook_size=32)


@dataclass
class VQVAEConfig(ConvTokenizerConfig):
    code_dim: int = spec(16, ge=1)
    codebook_size: int = spec(128, ge=2, le=MAX_CODES)
    commitment: float = spec(0.25, ge=0)  # beta, on the encoder term
    ema: bool = spec(True)  # False: the codebook is a parameter trained by the codebook loss
    ema_decay: float = spec(0.99, gt=0, lt=1)
    restart_threshold: float = spec(1.0, ge=0)  # restart codes whose EMA count falls below; 0: never
    l2_normalize: bool = spec(False)


@register_tokenizer("vqvae", tiny=TINY)
class VQVAE(ConvTokenizer):
    """VQ-VAE: conv autoencoder with an EMA vector-quantized bottleneck."""

    config_class = VQVAEConfig
    config: VQVAEConfig
    has_training_stats = True

    def build_quantizer(self, config: VQVAEConfig) -> VectorQuantizer:  # type: ignore[override]
        return VectorQuantizer(config.codebook_size, config.code_dim, beta=config.commitment, decay=config.ema_decay,
                               restart_threshold=config.restart_threshold, l2_normalize=config.l2_normalize,
                               ema=config.ema, usage_window=config.usage_window)
