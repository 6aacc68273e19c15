"""argen: autoregressive image and video generation with exact likelihoods."""
from argen.checkpoint import load, save
from argen.metrics.bpd import bits_per_dim
from argen.registry import create_model, list_models, register_model

__version__ = "0.1.0"
__all__ = ["list_models", "create_model", "register_model", "save", "load", "bits_per_dim", "__version__"]
