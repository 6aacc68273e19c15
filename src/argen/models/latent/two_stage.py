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

Video: with a video tokenizer (`tokenizer.modality == "video"`) the same class is a model over clips
(T, C, H, W): the prior is any registered video model over the code volumes (t, s, h, w)
(`tokenizer.prior_shape`), `complete` keeps the codes whose whole (frame_stride, H/h, W/w) cell of
pixels is known, and `predict(context (B, k, C, H, W))` encodes the context, keeps the code frames
wholly covered by the k known frames (k // frame_stride of them: exact for a temporally causal
tokenizer, whose code frames depend on no later frame), completes the rest with the prior, decodes
and pastes the context frames back. Nothing here branches on the kind: shapes come from the
tokenizer (`data_shape`, `code_shape`, `prior_shape`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from argen import positions
from argen.conditioning import CondSpec
from argen.models.base import check_flag, prediction_problem


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


def token_mask(known: Tensor, code_shape: tuple[int, ...]) -> Tensor:
    """(B, *code_shape) bool: a code is known when every pixel of its cell is known in `known` (B, *P):
    (B, H, W) -> (B, h, w) for images, (B, T, H, W) -> (B, t, h, w) for clips.

    Cells tile the data (each axis of P a multiple of code_shape's). A code whose cell is partly hidden
    is regenerated: conditioning on it would leak a guess of the hidden pixels' codes.
    """
    b, sizes = known.shape[0], tuple(known.shape[1:])
    code_shape = tuple(code_shape)
    if len(sizes) != len(code_shape) or any(n % c for n, c in zip(sizes, code_shape)):
        raise ValueError(f"expected a data size divisible by the code grid {code_shape}, given {sizes}")
    split = [d for c, n in zip(code_shape, sizes) for d in (c, n // c)]
    cells = known.reshape(b, *split)
    return cells.all(dim=tuple(range(2, 2 * len(sizes) + 1, 2)))


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
        want = tuple(tokenizer.prior_shape)  # (1, h, w) for an image tokenizer, (t, s, h, w) for a video one
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

    # ----- facts (the model contract over images or clips) --------------------------------------
    @property
    def data_shape(self) -> tuple[int, ...]:
        """(C, H, W) images, or (T, C, H, W) clips with a video tokenizer."""
        return tuple(self.tokenizer.data_shape)

    @property
    def position_shape(self) -> tuple[int, ...]:
        """data_shape without the channel axis: (H, W), or (T, H, W)."""
        shape = self.data_shape
        return shape[:-3] + shape[-2:]

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
    def code_shape(self) -> tuple[int, ...]:
        """The tokenizer's codes of one item: (h, w), or (t, s, h, w)."""
        return tuple(self.tokenizer.code_shape)

    @property
    def frame_stride(self) -> int:
        """Video frames per code frame (a video tokenizer's; 1 for images, which have no frames)."""
        return int(getattr(self.tokenizer, "frame_stride", 1))

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

    @property
    def sampling_defaults(self) -> dict[str, Any]:
        """The prior's declared sampling defaults (HARP's top-k, LVT's temperature)."""
        return dict(self.prior.sampling_defaults)

    # ----- the two stages ----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> the prior's data, code grids (B, 1, h, w); clips -> (B, t, s, h, w)."""
        self.tokenizer.eval()
        return self.tokenizer.encode(x).reshape(x.shape[0], *self.tokenizer.prior_shape)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Code grids (B, 1, h, w) -> images (B, C, H, W); code volumes (B, t, s, h, w) -> clips."""
        self.tokenizer.eval()
        return self.tokenizer.decode(codes.reshape(codes.shape[0], *self.code_shape))

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
        """Fill the pixels where `known` (B, *position_shape) or position_shape is False; the known
        pixels are kept (position_shape: (H, W) for images, (T, H, W) for clips).

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
        mask = token_mask(known, tuple(self.prior.position_shape))
        filled = self.prior.complete(codes, mask, self.prior_cond(cond), config, **options)
        return torch.where(known.unsqueeze(-3), x, self.decode(filled))  # (B, [T,] 1, H, W): over channels

    @torch.no_grad()
    def predict(self, context: Tensor, cond: Tensor | None = None, config: Any = None, **options: Any) -> Tensor:
        """Video prediction: the first k frames (B, k, C, H, W) -> whole clips (B, T, C, H, W).

        `complete` with the first k frames known: the code frames wholly inside them (k // frame_stride)
        are kept, the prior draws the others, the decoded clip gets the k true frames back. With k not a
        multiple of frame_stride the partly known code frame is drawn too (its true frames are pasted).
        With a tokenizer that is not `temporally_causal` the kept code frames are encoded from clips whose
        unknown frames are zeros, so they differ from the true clip's: an approximation, not conditioning.
        """
        x, known = prediction_problem(self, context)
        return self.complete(x, known, cond, config, **options)

    @torch.no_grad()
    def future_token_nats(self, x: Tensor, context: int, frames: int | None = None,
                          cond: Tensor | None = None) -> dict[str, Any]:
        """-log p(codes of frames [context, context + frames) | the code frames wholly in the first `context`
        frames) of true clips x (B, T, C, H, W), from the prior's per-position log_prob (B, t, h, w).

        The prediction protocol of `argen.metrics.video.prediction_nats`, in tokens: the code frames from
        context // frame_stride up to the one holding frame context + frames - 1. Exact for the codes (the
        prior's likelihood), not a likelihood of the pixels, and only when "conditional" is True: the
        prior generates frame by frame (each code's conditional then reads the earlier code frames and
        nothing later) and the tokenizer is temporally causal (the context's code frames then hold no
        information about later frames). Otherwise (a subscale order, LVT's default; a non-causal 3-D
        encoder) the sum is reported but is not -log p(future | past).
        """
        shape = self.data_shape
        if len(shape) != 4:
            raise ValueError(f"future_token_nats is for video (data (T, C, H, W)), given data shape {shape}")
        t_max, stride = shape[0], self.frame_stride
        frames = t_max - context if frames is None else frames
        if not (isinstance(context, int) and isinstance(frames, int)) or context < 1 or frames < 1 \
                or context + frames > t_max:
            raise ValueError(f"expected context k >= 1 and frames n >= 1 with k + n <= {t_max}, given k={context}, "
                             f"n={frames}")
        first, stop = context // stride, -(-(context + frames) // stride)
        per_pos = self.log_prob(x, cond, reduce=False)  # (B, t, h, w)
        nats = -per_pos[:, first:stop].double().flatten(1).sum(1)
        tokens = (stop - first) * math.prod(self.prior.data_shape[1:])
        frame_major = positions.frame_major(self.prior.generation_order())
        causal = bool(self.tokenizer.temporally_causal)
        return {"context": context, "frames": frames, "code_frames": [first, stop], "tokens": tokens,
                "conditional": frame_major and causal, "frame_major": frame_major, "temporally_causal": causal,
                "nats_per_token": float(nats.mean() / tokens), "bits_per_token": float(nats.mean() / (tokens * math.log(2))),
                "exact": False, "unit": "token", "n": int(x.shape[0])}

    def extra_repr(self) -> str:
        return f"prior={self.prior.model_name!r}, tokenizer={self.tokenizer.model_name!r}, code_shape={self.code_shape}"
