"""Two-stage latent models: a tokenizer (images <-> code grids) composed with an AR prior over codes."""
from argen.models.latent.two_stage import LatentModel, token_mask

__all__ = ["LatentModel", "token_mask"]
