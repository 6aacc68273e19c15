"""Lossless compression of images with any trained argen model (ANS entropy coding)."""
from argen.compress.codec import (
    LOSSLESS_SUFFIXES,
    CompressedFile,
    CorruptFileError,
    ModelMismatchError,
    check_names,
    compress_arrays,
    decompress_arrays,
    read_container,
    restored_name,
)

__all__ = ["LOSSLESS_SUFFIXES", "CompressedFile", "CorruptFileError", "ModelMismatchError", "check_names",
           "compress_arrays", "decompress_arrays", "read_container", "restored_name"]
