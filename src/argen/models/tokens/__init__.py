"""Priors over a tokenizer's code grids (contract v2: integer data (1, h, w), levels = codebook size)."""
from argen.models.tokens import imagebart, iqvae, parti, token_gpt  # noqa: F401
