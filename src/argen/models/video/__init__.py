"""Video models, one file per family: over pixels, and priors over video tokenizers' code volumes (t, s, h, w)."""
from argen.models.video import (
    frame_gan,  # noqa: F401
    harp,  # noqa: F401
    lvt,  # noqa: F401
    multiscale,  # noqa: F401
    video_transformer,  # noqa: F401
    videogpt,  # noqa: F401
    vpn,  # noqa: F401
    vqvae_video_pixelcnn,  # noqa: F401
)
