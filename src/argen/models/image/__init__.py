"""Pixel-space image models, one file per family."""
from argen.models.image import pixelcnn  # noqa: F401
