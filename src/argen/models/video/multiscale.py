"""Parallel multiscale video model (Reed et al. 2017), conditioned on previous frames (survey eq. 4).

Each frame is generated coarse to fine. A base grid (every `f`-th row and column, f = H / base_size,
a power of two) comes first, in raster order, from a small masked-convolution model. Then each 2x
upscale adds the three missing pixels of every 2x2 block of the current grid as three successive
groups, offsets (0, 1), (1, 0), (1, 1) of the block; every pixel of a group is predicted at once by
a shallow conv net that sees only the pixels of earlier groups (masked at its input) and the
previous `context_frames` frames at full resolution. Pixels of one group are therefore
conditionally independent given earlier groups, and

    p(frame_t | frames < t) = prod_g prod_{i in group g} p(x_i | groups < g, frames < t)

is exact with a categorical head. Sampling needs base_h * base_w + 3 * log2(f) network calls per
frame (`calls_per_frame`) instead of H * W: the "group" stepper (argen.sampling.group_sampler)
makes one `group_logits` call per group and serves all its positions from it; the naive
reference (a full pass per position) draws the same samples, because the loop draws the positions
of a group in `generation_order()` from the same per-position conditionals.

Channels of a pixel are conditionally independent given earlier groups (one C*L categorical per
position; colour dependencies within a pixel would cost C calls per group).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.distributions import Categorical
from argen.fields import spec
from argen.models.base import ARModel, Capabilities, VideoModelConfig
from argen.nn.masked import MaskedConv2d
from argen.nn.pixels import to_unit
from argen.registry import register_model

#: Offsets (dy, dx) of the three groups an upscale adds inside each 2x2 block, in generation order.
GROUP_OFFSETS = ((0, 1), (1, 0), (1, 1))


@dataclass
class MultiscaleVideoConfig(VideoModelConfig):
    base_size: int = spec(4, ge=1)  # rows of the base grid; H / base_size must be a power of two
    context_frames: int = spec(1, ge=1, le=8)  # previous frames each frame is conditioned on (k)
    hidden: int = spec(32, ge=1)  # width of every conv net
    context_layers: int = spec(2, ge=1)  # 3x3 conv layers of the previous-frames encoder
    base_layers: int = spec(3, ge=1)  # masked conv layers of the base raster model
    group_layers: int = spec(2, ge=1)  # 3x3 conv layers of each group's shallow net

    def validate(self) -> None:
        super().validate()
        if self.num_classes is not None:
            raise ValueError(f"model.num_classes: multiscale_video is unconditional (it conditions on frames), "
                             f"expected None, given {self.num_classes}")
        _, _, h, w = self.video_shape
        if h % self.base_size or not _power_of_two(h // self.base_size):
            raise ValueError(f"model.base_size: the frame height must be base_size times a power of two, given "
                             f"height {h} and base_size {self.base_size}")
        factor = h // self.base_size
        if w % factor:
            raise ValueError(f"model.video_shape: the frame width must be divisible by the upscale factor {factor} "
                             f"(height {h} / base_size {self.base_size}), given width {w}")

    @property
    def factor(self) -> int:
        """Spacing of the base grid: H / base_size (a power of two)."""
        return self.video_shape[2] // self.base_size

    @property
    def upscales(self) -> int:
        """Number of 2x upscales from the base grid to the full frame."""
        return int(math.log2(self.factor))


def _power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


class _GroupNet(nn.Module):
    """The shallow conv net of one group: (known pixels of the grid, their indicator, the context
    features at the grid's positions) -> C*L logits at every grid position."""

    def __init__(self, channels: int, hidden: int, layers: int, out: int) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(channels + 1 + hidden, hidden, 3, padding=1), nn.ReLU()]
        for _ in range(layers - 1):
            mods += [nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU()]
        mods.append(nn.Conv2d(hidden, out, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, values: Tensor, known: Tensor, context: Tensor) -> Tensor:
        v = torch.where(known, values, torch.zeros((), dtype=values.dtype, device=values.device))
        ind = known[:, :1].to(values.dtype)
        return self.net(torch.cat([v, ind, context], dim=1))


class _BaseNet(nn.Module):
    """Raster-order masked convolutions over the base grid; the context features enter after the
    first (mask A) layer, unmasked (they come from earlier frames)."""

    def __init__(self, channels: int, hidden: int, layers: int, out: int) -> None:
        super().__init__()
        self.first = MaskedConv2d(channels, hidden, 5, "A")
        self.context = nn.Conv2d(hidden, hidden, 1)
        self.layers = nn.ModuleList(MaskedConv2d(hidden, hidden, 3, "B") for _ in range(layers - 1))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, out, 1))

    def forward(self, values: Tensor, context: Tensor) -> Tensor:
        h = self.first(values) + self.context(context)
        for layer in self.layers:
            h = h + layer(F.relu(h))
        return self.head(h)


@register_model(
    "multiscale_video",
    tiny=dict(video_shape=(3, 1, 8, 8), base_size=2, hidden=8, context_layers=1, base_layers=2, group_layers=1),
    variants={"two_context": dict(context_frames=2)},
    modality="video",
)
class MultiscaleVideo(ARModel):
    """Parallel multiscale video model (Reed et al. 2017): O(log N) network calls per frame."""

    config_class = MultiscaleVideoConfig
    config: MultiscaleVideoConfig
    capabilities = Capabilities(stepper_kind="group")

    def __init__(self, config: MultiscaleVideoConfig) -> None:
        super().__init__(config)
        _, c, _, _ = config.video_shape
        k, hid, out = config.context_frames, config.hidden, c * config.levels
        self.distribution = Categorical(c, config.levels)
        enc: list[nn.Module] = [nn.Conv2d(k * (c + 1), hid, 3, padding=1), nn.ReLU()]
        for _ in range(config.context_layers - 1):
            enc += [nn.Conv2d(hid, hid, 3, padding=1), nn.ReLU()]
        self.context_net = nn.Sequential(*enc)
        self.base_net = _BaseNet(c, hid, config.base_layers, out)
        self.group_nets = nn.ModuleList(_GroupNet(c, hid, config.group_layers, out)
                                        for _ in range(3 * config.upscales))
        self._groups = self._build_groups()

    # ----- the groups ----------------------------------------------------------------------------
    def _build_groups(self) -> list[list[tuple[int, int]]]:
        _, _, h, w = self.config.video_shape
        f = self.config.factor
        groups = [[(i, j)] for i in range(0, h, f) for j in range(0, w, f)]  # the base, one position each
        for s in range(1, self.config.upscales + 1):
            d = f >> s  # spacing of the grid this upscale completes
            for dy, dx in GROUP_OFFSETS:
                groups.append([(i, j) for i in range(dy * d, h, 2 * d) for j in range(dx * d, w, 2 * d)])
        return groups

    def groups(self) -> list[list[tuple[int, int]]]:
        """The (h, w) positions of each group of a frame, in generation order (the same for every
        frame): the base positions one by one in raster order, then three groups per upscale."""
        return [list(g) for g in self._groups]

    @property
    def num_base_groups(self) -> int:
        """Groups of the base grid (one position each): base_h * base_w."""
        _, _, h, w = self.config.video_shape
        return (h // self.config.factor) * (w // self.config.factor)

    @property
    def calls_per_frame(self) -> int:
        """Network calls the group stepper makes per generated frame: base_h * base_w + 3 * log2(f)."""
        return len(self._groups)

    def generation_order(self) -> list[tuple[int, ...]]:
        """(t, h, w): frame by frame; within a frame the groups in turn, each group in raster order
        (its positions are generated from one network call)."""
        t_len = self.config.video_shape[0]
        return [(t, i, j) for t in range(t_len) for g in self._groups for (i, j) in g]

    # ----- the networks ------------------------------------------------------------------------------
    def _context_input(self, xf: Tensor) -> Tensor:
        """(B, T, C, H, W) unit-scale clip -> (B, T, k*(C+1), H, W): for each frame the k previous
        frames (zeros before the clip starts) and an indicator of which ones exist."""
        b, t_len, c, h, w = xf.shape
        parts = []
        for j in range(1, self.config.context_frames + 1):
            shifted = torch.zeros_like(xf)
            present = torch.zeros(b, t_len, 1, h, w, dtype=xf.dtype, device=xf.device)
            if j < t_len:
                shifted[:, j:] = xf[:, :-j]
                present[:, j:] = 1.0
            parts += [shifted, present]
        return torch.cat(parts, dim=2)

    def _frame_logits(self, cur: Tensor, ctx: Tensor, groups: range) -> Tensor:
        """Logits (N, C*L, H, W) of frames `cur` (N, C, H, W) on the unit scale given their context
        features (N, hidden, H, W); only positions of `groups` are written (others zero)."""
        n, c, h, w = cur.shape
        f = self.config.factor
        out = cur.new_zeros(n, self.distribution.num_params, h, w)
        nb = self.num_base_groups
        if any(g < nb for g in groups):
            out[:, :, ::f, ::f] = self.base_net(cur[:, :, ::f, ::f], ctx[:, :, ::f, ::f])
        for g in groups:
            if g < nb:
                continue
            u = g - nb
            s, (dy, dx) = u // 3 + 1, GROUP_OFFSETS[u % 3]
            d = f >> s
            grid = cur[:, :, ::d, ::d]
            known = torch.zeros(grid.shape[-2:], dtype=torch.bool, device=cur.device)
            known[::2, ::2] = True  # the coarser grid
            for ey, ex in GROUP_OFFSETS[:u % 3]:  # earlier groups of this upscale
                known[ey::2, ex::2] = True
            logits = self.group_nets[u](grid, known.expand(n, c, -1, -1), ctx[:, :, ::d, ::d])
            out[:, :, dy * d::2 * d, dx * d::2 * d] = logits[:, :, dy::2, dx::2]
        return out

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """(B, T, C, H, W) long -> logits (B, C*L, T, H, W), every group of every frame in one pass."""
        b, t_len, c, h, w = x.shape
        xf = to_unit(x, self.levels)
        ctx = self.context_net(self._context_input(xf).flatten(0, 1))
        out = self._frame_logits(xf.flatten(0, 1), ctx, range(len(self._groups)))
        return out.view(b, t_len, -1, h, w).transpose(1, 2)

    def frame_context(self, x: Tensor, t: int, cond: Tensor | None = None) -> Tensor:
        """Context features (B, hidden, H, W) of frame `t` (from frames t-k .. t-1 of `x`)."""
        self._check_frame(t)
        k = self.config.context_frames
        lo = max(0, t - k)
        window = to_unit(x[:, lo:t + 1], self.levels)  # frames lo..t: frame t's context is its past
        return self.context_net(self._context_input(window)[:, t - lo])

    def group_logits(self, x: Tensor, t: int, g: int, cond: Tensor | None = None,
                     context: Tensor | None = None) -> Tensor:
        """One network call: logits (B, C*L, H, W) of frame `t`, exact at the positions of group `g`
        (`groups()[g]`) given the earlier groups of frame t in `x` and its previous frames; other
        positions are zero or not yet valid. `context`: `frame_context(x, t)`, computed once per frame."""
        self._check_frame(t)
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < len(self._groups):
            raise ValueError(f"expected a group index in [0, {len(self._groups) - 1}], given {g!r}")
        if context is None:
            context = self.frame_context(x, t, cond)
        return self._frame_logits(to_unit(x[:, t], self.levels), context, range(g, g + 1))

    def _check_frame(self, t: int) -> None:
        t_len = self.config.video_shape[0]
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < t_len:
            raise ValueError(f"expected a frame index in [0, {t_len - 1}], given {t!r}")
