"""Lossless compression of images with any trained argen model (ANS entropy coding)."""
from argen.compress.codec import (
    CompressedFile,
    CorruptFileError,
    ModelMismatchError,
    compress_arrays,
    decompress_arrays,
    read_container,
)

__all__ = ["CompressedFile", "CorruptFileError", "ModelMismatchError", "compress_arrays", "decompress_arrays",
           "read_container"]
