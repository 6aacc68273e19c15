"""Image and video tokenizers for two-stage latent models; importing this package registers them all.

`create_tokenizer("vqvae", image_shape=(1, 28, 28))`, `list_tokenizers()`; the contract is in
`argen.tokenizers.base`.
"""
from argen.tokenizers import frames, fsq, hvqvae, iqvae, vqgan, vqvae, vqvae3d  # noqa: F401  (registers the families)
from argen.tokenizers.base import (
    Tokenizer,
    TokenizerConfig,
    TokenizerEntry,
    VideoTokenizer,
    VideoTokenizerConfig,
    build_tokenizer_config,
    create_tokenizer,
    get_tokenizer_entry,
    is_video_tokenizer,
    list_tokenizers,
    register_tokenizer,
    tiny_tokenizer_kwargs,
)

__all__ = [
    "Tokenizer", "TokenizerConfig", "TokenizerEntry", "build_tokenizer_config", "create_tokenizer",
    "get_tokenizer_entry", "list_tokenizers", "register_tokenizer", "tiny_tokenizer_kwargs",
    "VideoTokenizer", "VideoTokenizerConfig", "is_video_tokenizer",
]
