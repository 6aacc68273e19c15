"""The two-stage latent model (VQ-VAE + PixelCNN prior, VQ-GAN + transformer): a trained
tokenizer maps an image (C, H, W) to a (h, w) grid of codes, and an ordinary AR prior of the
registry, built over data (1, h, w) with `levels = codebook_size`, models the codes.

Neither part knows the other: the prior is any registered model (token_gpt, pixelcnn, ...),
trained on the code grids `argen tokenize` wrote, and the tokenizer is any registered tokenizer.
This class composes them behind the model contract over images, so `argen sample`, `complete`,
`eval` and `fid` work on a prior's run directory (which holds a copy of its tokenizer):

- `sample` draws code grids from the prior and decodes them;
- `complete` encodes the image, keeps the codes whose whole cell of pixels is known, completes
  the rest with the prior, decodes, and puts the known pixels back;
- `log_prob` is the prior's exact log-likelihood of the image's codes, in nats. It is not a
  likelihood of the pixels (the tokenizer is lossy), so `exact_likelihood` is False, and
  `num_dims` counts tokens: "bits/dim" of this model is bits per token.

Conditions: the prior's (class labels, caption tokens) pass through. A tokenizer that encodes a
condition image with the image (IQ-VAE: `tokenizer.condition_spec`, e.g. an edge map) makes this
model conditioned on that image (`cond_spec` is the tokenizer's): every method takes the image and
hands the prior its tokens (`encode_condition`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from argen.conditioning import CondSpec
from argen.models.base import check_flag


@dataclass(frozen=True)
class LatentConfig:
    """What a latent model is: its two parts' names and configs (for fingerprints and messages)."""

    prior: str
    prior_config: dict[str, Any]
    tokenizer: str
    tokenizer_config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"prior": self.prior, "prior_config": self.prior_config, "tokenizer": self.tokenizer,
                "tokenizer_config": self.tokenizer_config}


def token_mask(known: Tensor, code_shape: tuple[int, int]) -> Tensor:
    """(B, h, w) bool: a code is known when every pixel of its cell is known in `known` (B, H, W).

    Cells tile the image (H and W are multiples of h and w). A code whose cell is partly hidden is
    regenerated: conditioning on it would leak a guess of the hidden pixels' codes.
    """
    b, height, width = known.shape
    h, w = code_shape
    if height % h or width % w:
        raise ValueError(f"expected an image size divisible by the code grid {code_shape}, given {(height, width)}")
    cells = known.reshape(b, h, height // h, w, width // w)
    return cells.all(dim=4).all(dim=2)


class LatentModel(nn.Module):
    """A tokenizer and a prior over its codes, as one model over images (see the module doc)."""

    kind: ClassVar[str] = "latent"
    #: log_prob is the prior's likelihood of the codes, not of the pixels
    exact_likelihood: ClassVar[bool] = False
    #: what `num_dims` counts, so reports say "bits/token"
    likelihood_unit: ClassVar[str] = "token"

    def __init__(self, tokenizer: nn.Module, prior: nn.Module) -> None:
        super().__init__()
        if getattr(type(tokenizer), "kind", None) != "tokenizer":
            raise ValueError(f"expected a tokenizer as the first part, given a {type(tokenizer).__name__}")
        want = (1, *tokenizer.code_shape)
        if tuple(prior.data_shape) != want or prior.levels != tokenizer.codebook_size:
            raise ValueError(f"expected a prior over code grids {want} with {tokenizer.codebook_size} levels "
                             f"(the tokenizer's codebook), given a prior over {tuple(prior.data_shape)} with "
                             f"{prior.levels} levels")
        self.tokenizer = tokenizer.eval()
        self.prior = prior
        self.model_name = f"{prior.model_name} over {tokenizer.model_name}"
        self.config = LatentConfig(prior.model_name, prior.config.to_dict(), tokenizer.model_name,
                                   tokenizer.config.to_dict())

    def train(self, mode: bool = True) -> "LatentModel":
        """Only the prior changes mode: the tokenizer is fixed (eval mode: no codebook updates)."""
        self.training = mode
        self.prior.train(mode)
        self.tokenizer.eval()
        return self

    # ----- facts (the model contract over images) ----------------------------------------------
    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.tokenizer.image_shape)

    @property
    def position_shape(self) -> tuple[int, ...]:
        return self.data_shape[-2:]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.position_shape

    @property
    def channels(self) -> int:
        return self.data_shape[-3]

    @property
    def levels(self) -> int:
        return self.tokenizer.levels

    @property
    def code_shape(self) -> tuple[int, int]:
        return tuple(self.tokenizer.code_shape)

    @property
    def num_dims(self) -> int:
        """Tokens per image: the denominator of this model's bits per token."""
        return self.prior.num_dims

    @property
    def cond_spec(self) -> CondSpec:
        """The prior's conditions, or the condition image a condition-encoding tokenizer takes."""
        spec = self.tokenizer.condition_spec
        return spec if spec is not None else self.prior.cond_spec

    @torch.no_grad()
    def encode_condition(self, c: Tensor) -> Tensor:
        """A condition image (B, C, H, W) -> the prior's condition tokens (B, L), via the tokenizer."""
        self.tokenizer.eval()
        return self.tokenizer.encode_condition(c)

    def prior_cond(self, cond: Tensor | None) -> Tensor | None:
        """The prior's `cond` for this model's `cond` (checked): tokens of a condition image, else itself."""
        if cond is None or self.tokenizer.condition_spec is None:
            return cond
        self.cond_spec.check(cond, cond.shape[0])
        return self.encode_condition(cond)

    @property
    def capabilities(self) -> Any:
        return self.prior.capabilities

    @property
    def own_stepper(self) -> bool:
        return self.prior.own_stepper

    @property
    def device(self) -> torch.device:
        return self.prior.device

    def null_cond(self, batch: int) -> Tensor:
        return self.prior.null_cond(batch)

    # ----- the two stages ----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> the prior's data, code grids (B, 1, h, w)."""
        self.tokenizer.eval()
        return self.tokenizer.encode(x).unsqueeze(1)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Code grids (B, 1, h, w) -> images (B, C, H, W)."""
        self.tokenizer.eval()
        return self.tokenizer.decode(codes[:, 0])

    def check_input(self, x: Tensor, cond: Tensor | None = None) -> None:
        self.tokenizer.check_input(x)
        if self.tokenizer.condition_spec is not None:
            self.cond_spec.check(cond, x.shape[0])
        else:
            self.prior.check_cond(cond, x.shape[0])

    def log_prob(self, x: Tensor, cond: Tensor | None = None, reduce: bool = True) -> Tensor:
        """The prior's log-likelihood of the image's codes, nats: (B,), or (B, h, w) per token."""
        check_flag("reduce", reduce)
        self.check_input(x, cond)
        return self.prior.log_prob(self.encode(x), self.prior_cond(cond), reduce=reduce)

    @torch.no_grad()
    def sample(self, n: int, cond: Tensor | None = None, config: Any = None, **options: Any) -> Tensor:
        """`n` images (n, C, H, W): the prior's code grids, decoded. Options as the prior's `sample`."""
        return self.decode(self.prior.sample(n, self.prior_cond(cond), config, **options))

    @torch.no_grad()
    def complete(self, x: Tensor, known: Tensor, cond: Tensor | None = None, config: Any = None,
                 **options: Any) -> Tensor:
        """Fill the pixels where `known` (B, H, W) or (H, W) is False; the known pixels are kept.

        The codes whose cells are wholly known condition the prior (in its order: a raster prior
        sees only the known codes before each hidden one); the others are drawn, then decoded.
        """
        self.check_input(x, cond)
        want = tuple(self.position_shape)
        if not isinstance(known, Tensor) or known.dtype != torch.bool:
            raise ValueError(f"expected known as a torch.bool tensor, given {getattr(known, 'dtype', type(known).__name__)}")
        if tuple(known.shape) == want:
            known = known.expand(x.shape[0], *want)
        if tuple(known.shape) != (x.shape[0], *want):
            raise ValueError(f"expected known of shape {want} or {(x.shape[0], *want)}, given {tuple(known.shape)}")
        known = known.to(x.device)
        codes = self.encode(x)
        filled = self.prior.complete(codes, token_mask(known, self.code_shape), self.prior_cond(cond), config, **options)
        return torch.where(known.unsqueeze(1), x, self.decode(filled))

    def extra_repr(self) -> str:
        return f"prior={self.prior.model_name!r}, tokenizer={self.tokenizer.model_name!r}, code_shape={self.code_shape}"
