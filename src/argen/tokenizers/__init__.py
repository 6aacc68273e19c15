"""Image tokenizers for two-stage latent models; importing this package registers them all.

`create_tokenizer("vqvae", image_shape=(1, 28, 28))`, `list_tokenizers()`; the contract is in
`argen.tokenizers.base`.
"""
from argen.tokenizers import fsq, vqgan, vqvae  # noqa: F401  (registers the families)
from argen.tokenizers.base import (
    Tokenizer,
    TokenizerConfig,
    TokenizerEntry,
    build_tokenizer_config,
    create_tokenizer,
    get_tokenizer_entry,
    list_tokenizers,
    register_tokenizer,
    tiny_tokenizer_kwargs,
)

__all__ = [
    "Tokenizer", "TokenizerConfig", "TokenizerEntry", "build_tokenizer_config", "create_tokenizer",
    "get_tokenizer_entry", "list_tokenizers", "register_tokenizer", "tiny_tokenizer_kwargs",
]
