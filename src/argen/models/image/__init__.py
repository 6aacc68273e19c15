"""Pixel-space image models, one file per family."""
from argen.models.image import (
    ardm,  # noqa: F401
    fvsbn,  # noqa: F401
    gated_pixelcnn,  # noqa: F401
    image_transformer,  # noqa: F401
    lmconv,  # noqa: F401
    made,  # noqa: F401
    nade,  # noqa: F401
    pixelcnn,  # noqa: F401
    pixelcnn_pp,  # noqa: F401
    pixelrnn,  # noqa: F401
    pixelsnail,  # noqa: F401
)
