"""Every model family; importing this package registers them all."""
from argen.models import image, tokens, video  # noqa: F401
from argen.models.base import ARModel, ModelConfig

__all__ = ["ARModel", "ModelConfig"]
