"""Pixel-space video models, one file per family."""
from argen.models.video import (
    frame_gan,  # noqa: F401
    multiscale,  # noqa: F401
    video_transformer,  # noqa: F401
    vpn,  # noqa: F401
)
