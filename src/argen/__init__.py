"""argen: autoregressive image and video generation with exact likelihoods."""
from argen.checkpoint import load, save
from argen.metrics.bpd import bits_per_dim
from argen.registry import create_model, list_models, register_model
from argen.tokenizers import create_tokenizer, list_tokenizers

__version__ = "0.1.0"
__all__ = ["list_models", "create_model", "register_model", "list_tokenizers", "create_tokenizer", "save", "load",
           "bits_per_dim", "__version__"]
