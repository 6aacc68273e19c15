"""Quantizers of the tokenizers: a vector quantizer with an EMA codebook, sliced vector quantization
(several such codebooks per position, LVT) and FSQ.

Both take a channels-first latent z (B, D, *S) and return a `Quantized`: the straight-through
quantized latent, the code indices (B, *S), the loss terms and the batch's statistics. Both run
in fp32 inside `torch.autocast(..., enabled=False)` whatever the caller's autocast: distances,
EMA sums and tanh bounds lose codes (or turn to NaN) in half precision.

EMA protocol (so a trainer can all-reduce it over ranks): in training mode `forward` never changes
the codebook. It returns per-batch statistics `{"vq_counts": (counts (K,), ones), "vq_sums":
(sums (K, D), ones)}` and keeps the batch's encoder outputs aside as candidates for data
initialisation and dead-code restarts. After the optimizer step the owner calls
`update_statistics(stats)` with the statistics summed over micro-batches and ranks; it applies
the EMA, initialises the codebook from data on the first call, and restarts dead codes. The
random draws of initialisation and restarts are made on rank 0 and broadcast, so every rank keeps
the same codebook.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

Stats = dict[str, tuple[Tensor, Tensor]]


class VQLoss(NamedTuple):
    """The terms of the VQ-VAE loss (means over every element of z)."""

    total: Tensor  # codebook + beta * commitment
    codebook: Tensor  # ||sg[z] - e||^2: moves codes towards encoder outputs (0 with an EMA codebook)
    commitment: Tensor  # ||z - sg[e]||^2: keeps the encoder near its codes; beta multiplies THIS term


def vq_loss(z: Tensor, z_q: Tensor, beta: float, learned_codebook: bool = True) -> VQLoss:
    """`||sg[z] - e||^2 + beta * ||z - sg[e]||^2` (van den Oord et al.), computed before the
    straight-through step, with `z_q = e` the selected codes.

    beta weighs the *encoder* (commitment) term: taming's legacy default puts it on the codebook
    term instead (T issues #46, #57); tests pin the gradients: d/dz = 2 beta (z - e) / n.
    With an EMA codebook (`learned_codebook=False`) the codes are not trained by gradient, so the
    codebook term is absent (zero) and `z_q` receives no gradient at all.
    """
    commitment = F.mse_loss(z, z_q.detach())
    if learned_codebook:
        codebook = F.mse_loss(z_q, z.detach())
    else:
        codebook = z.new_zeros(())
    return VQLoss(codebook + beta * commitment, codebook, commitment)


def straight_through(z: Tensor, z_q: Tensor) -> Tensor:
    """z + sg(z_q - z): the value of z_q, the gradient of z (the decoder's gradient reaches the encoder)."""
    return z + (z_q - z).detach()


def perplexity(counts: Tensor) -> Tensor:
    """exp(entropy) of a code histogram: the effective number of codes used (1 .. K)."""
    total = counts.sum()
    if float(total) <= 0:
        return counts.new_ones(()).float()
    p = counts.float() / total
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


class Quantized(NamedTuple):
    """What a quantizer returns for a latent z (B, D, *S)."""

    z_q: Tensor  # (B, D, *S) fp32: the quantized latent, straight-through to z
    indices: Tensor  # (B, *S) long in [0, codebook_size)
    loss: Tensor  # scalar: the quantizer's loss term (VQ: codebook + beta * commitment; FSQ: 0)
    commitment: Tensor  # scalar ||z - sg[z_q]||^2, for the logs
    counts: Tensor  # (K,) float: how often each code was chosen in this batch
    stats: Stats  # training statistics for `update_statistics` (empty in eval mode or without EMA)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _broadcast(t: Tensor) -> Tensor:
    """`t` as rank 0 holds it (in place; a no-op in one process)."""
    if _distributed():
        dist.broadcast(t, src=0)
    return t


def _is_rank0() -> bool:
    return not _distributed() or dist.get_rank() == 0


class Quantizer(nn.Module):
    """What the two quantizers share: fp32 forward, the code count, a ring buffer of recent codes.

    The ring buffer holds the last `usage_window` indices chosen in training mode (a log, not a
    parameter: not saved, not synchronised between ranks); `window_usage` is the fraction of the
    codebook among them, the usage measure that does not depend on the batch size.
    """

    codebook_size: int
    dim: int
    #: True when `update_statistics` changes the quantizer (an EMA codebook)
    has_training_stats: bool = False

    def __init__(self, codebook_size: int, dim: int, usage_window: int) -> None:
        super().__init__()
        self.codebook_size, self.dim = codebook_size, dim
        self.register_buffer("recent", torch.full((usage_window,), -1, dtype=torch.long), persistent=False)
        self.register_buffer("recent_pos", torch.zeros((), dtype=torch.long), persistent=False)

    def forward(self, z: Tensor) -> Quantized:
        if z.dim() < 3 or z.shape[1] != self.dim:
            raise ValueError(f"expected a latent (B, {self.dim}, ...), given shape {tuple(z.shape)}")
        with torch.autocast(z.device.type, enabled=False):
            out = self._quantize(z.float())
        if self.training:
            self._record(out.indices)
        return out

    @torch.no_grad()
    def encode(self, z: Tensor) -> Tensor:
        """Code indices (B, *S) of a latent (B, D, *S); changes nothing (no statistics, no log)."""
        if z.dim() < 3 or z.shape[1] != self.dim:
            raise ValueError(f"expected a latent (B, {self.dim}, ...), given shape {tuple(z.shape)}")
        with torch.autocast(z.device.type, enabled=False):
            return self._indices(z.float())

    def _quantize(self, z: Tensor) -> Quantized:
        raise NotImplementedError

    def _indices(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def indices_to_latent(self, indices: Tensor) -> Tensor:
        """The quantized latent (B, D, *S) fp32 of code indices (B, *S)."""
        raise NotImplementedError

    def update_statistics(self, stats: Stats) -> None:
        """Fold summed training statistics into the quantizer (nothing to do by default)."""

    # ----- usage -------------------------------------------------------------------------------
    @torch.no_grad()
    def _record(self, indices: Tensor) -> None:
        flat = indices.reshape(-1)
        n = self.recent.numel()
        if flat.numel() >= n:
            self.recent.copy_(flat[-n:])
            self.recent_pos.zero_()
            return
        pos = (self.recent_pos + torch.arange(flat.numel(), device=flat.device)) % n
        self.recent[pos] = flat
        self.recent_pos.copy_((self.recent_pos + flat.numel()) % n)

    def window_usage(self) -> float:
        """Distinct codes among the last `usage_window` training assignments / codebook_size (NaN before any)."""
        seen = self.recent[self.recent >= 0]
        if seen.numel() == 0:
            return float("nan")
        return int(torch.unique(seen).numel()) / self.codebook_size

    def histogram(self, indices: Tensor) -> Tensor:
        """(K,) float counts of `indices`."""
        return torch.bincount(indices.reshape(-1), minlength=self.codebook_size).float()


class VectorQuantizer(Quantizer):
    """Nearest-neighbour vector quantization with an EMA codebook (VQ-VAE; VideoGPT's recipe).

    The codebook `embed` (K, D) is a buffer updated by an exponential moving average of the
    encoder outputs assigned to each code (decay 0.99): `ema_count` and `ema_sum`, counts
    Laplace-smoothed with `eps` so a rare code never divides by zero. With `ema=False` the
    codebook is a parameter trained by gradient through the codebook term of `vq_loss` instead
    (the counts are still tracked, for dead codes).

    Loss terms: EMA mode has only beta * commitment (the codebook term is absent); gradient mode
    has codebook + beta * commitment.
    Data initialisation: the first `update_statistics` sets the codes to random encoder outputs of
    that step (tiled with noise of std 0.01/sqrt(D) if there are fewer vectors than codes).
    Dead codes: after each EMA update, codes whose `ema_count` is below `restart_threshold` are
    set to random encoder outputs of the step (0 turns restarts off); `last_restarted` says how
    many. `l2_normalize`: codes and encoder outputs are unit vectors (cosine distance), which with
    a low `dim` keeps usage high (ViT-VQGAN, LlamaGen).
    """

    has_training_stats = True

    def __init__(self, codebook_size: int, dim: int, *, beta: float = 0.25, decay: float = 0.99, eps: float = 1e-5,
                 restart_threshold: float = 1.0, l2_normalize: bool = False, ema: bool = True,
                 usage_window: int = 65536, max_candidates: int = 16384) -> None:
        super().__init__(codebook_size, dim, usage_window)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), given {decay}")
        self.beta, self.decay, self.eps = float(beta), float(decay), float(eps)
        self.restart_threshold, self.l2_normalize, self.ema = float(restart_threshold), bool(l2_normalize), bool(ema)
        self.max_candidates = max(max_candidates, codebook_size)
        init = torch.randn(codebook_size, dim)
        if self.l2_normalize:
            init = F.normalize(init, dim=1)
        if self.ema:
            self.register_buffer("embed", init)
        else:
            self.embed = nn.Parameter(init)
        self.register_buffer("ema_count", torch.zeros(codebook_size))
        self.register_buffer("ema_sum", torch.zeros(codebook_size, dim))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.last_restarted = 0
        self._candidates: list[Tensor] = []  # this rank's encoder outputs since the last update

    def codebook(self) -> Tensor:
        """(K, D) fp32 codes (unit vectors with l2_normalize)."""
        e = self.embed.float()
        return F.normalize(e, dim=1) if self.l2_normalize else e

    def _flat(self, z: Tensor) -> Tensor:
        flat = rearrange(z, "b d ... -> (b ...) d")
        return F.normalize(flat, dim=1) if self.l2_normalize else flat

    @staticmethod
    def _nearest(flat: Tensor, codebook: Tensor) -> Tensor:
        # ||f - e||^2 = ||f||^2 - 2 f.e + ||e||^2; ||f||^2 is the same for every code
        dist2 = (codebook * codebook).sum(1)[None, :] - 2.0 * flat @ codebook.t()
        return dist2.argmin(1)

    def _indices(self, z: Tensor) -> Tensor:
        flat = self._flat(z)
        idx = self._nearest(flat, self.codebook().detach())
        return idx.view(z.shape[0], *z.shape[2:])

    def _quantize(self, z: Tensor) -> Quantized:
        flat = self._flat(z)
        codebook = self.codebook()
        idx = self._nearest(flat.detach(), codebook.detach())
        e = F.embedding(idx, codebook)  # gradient to the codebook only in gradient mode
        terms = vq_loss(flat, e, self.beta, learned_codebook=not self.ema)
        z_q = straight_through(flat, e)
        z_q = rearrange(z_q, "(b s) d -> b d s", b=z.shape[0]).reshape(z.shape)
        counts = self.histogram(idx)
        stats: Stats = {}
        if self.training:
            with torch.no_grad():
                sums = torch.zeros_like(self.ema_sum).index_add_(0, idx, flat.detach())
            stats = {"vq_counts": (counts, torch.ones_like(counts)), "vq_sums": (sums, torch.ones_like(sums))}
            self._keep_candidates(flat.detach())
        return Quantized(z_q, idx.view(z.shape[0], *z.shape[2:]), terms.total, terms.commitment.detach(), counts, stats)

    def indices_to_latent(self, indices: Tensor) -> Tensor:
        e = F.embedding(indices, self.codebook())  # (B, *S, D)
        return torch.movedim(e, -1, 1)

    # ----- statistics -------------------------------------------------------------------------
    def _keep_candidates(self, flat: Tensor) -> None:
        self._candidates.append(flat)
        total = sum(c.shape[0] for c in self._candidates)
        while len(self._candidates) > 1 and total - self._candidates[0].shape[0] >= self.max_candidates:
            total -= self._candidates.pop(0).shape[0]

    def _take_candidates(self) -> Tensor | None:
        if not self._candidates:
            return None
        out = torch.cat(self._candidates)[-self.max_candidates:]
        self._candidates = []
        return out

    def _draw(self, candidates: Tensor | None, n: int, tile_noise: bool) -> Tensor:
        """n rows drawn on rank 0 from its candidates (without replacement when there are enough,
        else tiled with small noise), broadcast so every rank gets the same rows."""
        out = torch.empty(n, self.dim, device=self.embed.device)
        have = torch.tensor(float(candidates is not None and candidates.shape[0] > 0), device=self.embed.device)
        if not bool(_broadcast(have)):  # rank 0's answer, so every rank raises (none waits in a broadcast)
            raise RuntimeError("no encoder outputs to draw codes from: call forward in training mode "
                               "before update_statistics")
        if _is_rank0():
            m = candidates.shape[0]
            if m >= n:
                rows = candidates[torch.randperm(m, device=candidates.device)[:n]]
            else:
                reps = math.ceil(n / m)
                rows = candidates.repeat(reps, 1)
                if tile_noise:
                    rows = rows + torch.randn_like(rows) * (0.01 / math.sqrt(self.dim))
                rows = rows[torch.randperm(rows.shape[0], device=rows.device)[:n]]
            if self.l2_normalize:
                rows = F.normalize(rows, dim=1)
            out.copy_(rows)
        return _broadcast(out)

    @torch.no_grad()
    def update_statistics(self, stats: Stats) -> None:
        """Apply one step's summed `vq_counts` / `vq_sums` (see the module doc); other names are ignored.

        EMA: count <- d count + (1-d) counts, sum <- d sum + (1-d) sums, code = sum / smoothed count,
        smoothed = (count + eps) / (N + K eps) * N with N = sum of counts (Laplace smoothing).
        """
        candidates = self._take_candidates()
        if "vq_counts" not in stats:
            self.last_restarted = 0
            return
        counts = stats["vq_counts"][0].to(self.ema_count.device, torch.float32)
        sums = stats["vq_sums"][0].to(self.ema_sum.device, torch.float32) if "vq_sums" in stats else None
        if counts.shape != self.ema_count.shape:
            raise ValueError(f"expected vq_counts of shape {tuple(self.ema_count.shape)}, given {tuple(counts.shape)}")
        if not bool(self.initialized):
            self._initialise(candidates)
            self.last_restarted = 0
            return
        d = self.decay
        self.ema_count.mul_(d).add_(counts, alpha=1 - d)
        if self.ema:
            if sums is None or sums.shape != self.ema_sum.shape:
                raise ValueError(f"expected vq_sums of shape {tuple(self.ema_sum.shape)}, "
                                 f"given {None if sums is None else tuple(sums.shape)}")
            self.ema_sum.mul_(d).add_(sums, alpha=1 - d)
            n = self.ema_count.sum()
            smoothed = (self.ema_count + self.eps) / (n + self.codebook_size * self.eps) * n
            self._set_codes(self.ema_sum / smoothed[:, None])
        self.last_restarted = self._restart(candidates)

    def _set_codes(self, codes: Tensor) -> None:
        if self.l2_normalize:
            codes = F.normalize(codes, dim=1)
        self.embed.data.copy_(codes)

    def _initialise(self, candidates: Tensor | None) -> None:
        codes = self._draw(candidates, self.codebook_size, tile_noise=True)
        self._set_codes(codes)
        self.ema_sum.copy_(self.codebook())
        self.ema_count.fill_(1.0)
        self.initialized.fill_(True)

    def _restart(self, candidates: Tensor | None) -> int:
        if self.restart_threshold <= 0:
            return 0
        # rank 0 decides which codes are dead (the counts are equal on every rank anyway)
        dead = _broadcast((self.ema_count < self.restart_threshold).float()).bool()
        n = int(dead.sum())
        if n == 0:
            return 0
        rows = self._draw(candidates, n, tile_noise=True)
        codes = self.embed.data.clone()
        codes[dead] = rows
        self._set_codes(codes)
        self.ema_count[dead] = self.restart_threshold
        self.ema_sum[dead] = self.codebook()[dead] * self.restart_threshold
        return n


class FSQ(Quantizer):
    """Finite scalar quantization (Mentzer et al. 2023): each of D = len(levels) channels is bounded
    and rounded to one of L_i values, so the codebook is the grid of prod(levels) points; no codebook,
    no auxiliary loss, no statistics.

    Channel i: half = (L-1)(1+eps)/2, offset = 0.5 for even L (else 0), shift = atanh(offset/half),
    bound(z) = tanh(z + shift) * half - offset, rounded with a straight-through gradient and divided
    by floor(L/2): values in [-1, 1]. Digit = value * floor(L/2) + floor(L/2) in [0, L); index =
    sum digit_i * basis_i with basis = cumprod([1] + levels[:-1]).
    """

    def __init__(self, levels: Sequence[int], usage_window: int = 65536, eps: float = 1e-3) -> None:
        levels = tuple(int(v) for v in levels)
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ levels must be integers >= 2, given {levels}")
        super().__init__(math.prod(levels), len(levels), usage_window)
        self.levels = levels
        self.eps = float(eps)
        basis = [1]
        for v in levels[:-1]:
            basis.append(basis[-1] * v)
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.long), persistent=False)
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.long), persistent=False)

    @property
    def basis(self) -> tuple[int, ...]:
        return tuple(int(b) for b in self._basis)

    def bound(self, z: Tensor) -> Tensor:
        """z (..., D) squashed into (-L/2, L/2) per channel, shifted so that rounding gives L values."""
        lv = self._levels.float()
        half = (lv - 1) * (1 + self.eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def quantize(self, z: Tensor) -> Tensor:
        """Codes (..., D) in [-1, 1], straight-through to z's gradient."""
        bounded = self.bound(z)
        rounded = straight_through(bounded, torch.round(bounded))
        return rounded / (self._levels // 2).float()

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """(..., D) codes (values on the grid) -> (...) long indices in [0, prod(levels))."""
        hw = (self._levels // 2).float()
        digits = torch.round(codes.float() * hw + hw).long()
        return (digits * self._basis).sum(-1)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """(...) long indices -> (..., D) fp32 codes in [-1, 1]."""
        digits = (indices.unsqueeze(-1) // self._basis) % self._levels
        hw = (self._levels // 2).float()
        return (digits.float() - hw) / hw

    def _indices(self, z: Tensor) -> Tensor:
        return self.codes_to_indices(self.quantize(torch.movedim(z, 1, -1)))

    def _quantize(self, z: Tensor) -> Quantized:
        codes = self.quantize(torch.movedim(z, 1, -1))
        idx = self.codes_to_indices(codes.detach())
        zero = z.new_zeros(())  # no auxiliary loss, nothing to commit to
        return Quantized(torch.movedim(codes, -1, 1), idx, zero, zero, self.histogram(idx), {})

    def indices_to_latent(self, indices: Tensor) -> Tensor:
        return torch.movedim(self.indices_to_codes(indices), -1, 1)


class SlicedQuantizer(Quantizer):
    """Sliced vector quantization (the Latent Video Transformer's VQ-VAE): the latent's D channels
    are split into `slices` equal slices, each quantized by its own `VectorQuantizer` (an EMA
    codebook of `codebook_size` codes of dim D / slices), so one position carries `slices` codes.

    Indices are (B, slices, *S), all in [0, codebook_size) (one value range, so a prior over them
    is an ordinary model with `slices` channels). Loss and commitment are the slices' mean, which
    equals a single quantizer's mean over all D channels; counts are summed over the slices (the
    histogram of the shared value range). Statistics are each slice's `vq_counts` / `vq_sums`
    under the names `vq_counts.k` / `vq_sums.k`, so the trainer's all-reduce needs nothing new and
    `update_statistics` hands slice k exactly its own.
    """

    def __init__(self, slices: int, codebook_size: int, dim: int, *, usage_window: int = 65536,
                 **vq_options: Any) -> None:
        if slices < 1 or dim % slices:
            raise ValueError(f"the code dim must split into equal slices: expected dim divisible by slices={slices}, "
                             f"given dim={dim}")
        super().__init__(codebook_size, dim, usage_window)
        self.slices = slices
        # usage is logged once, here, over every slice's codes: the slices keep no window of their own
        self.quantizers = nn.ModuleList(VectorQuantizer(codebook_size, dim // slices, usage_window=1, **vq_options)
                                        for _ in range(slices))
        self.has_training_stats = self.quantizers[0].has_training_stats

    @property
    def last_restarted(self) -> int:
        """Dead codes restarted at the last update, over all slices."""
        return sum(q.last_restarted for q in self.quantizers)

    def _parts(self, z: Tensor) -> tuple[Tensor, ...]:
        return z.chunk(self.slices, dim=1)

    def _indices(self, z: Tensor) -> Tensor:
        return torch.stack([q._indices(part) for q, part in zip(self.quantizers, self._parts(z))], dim=1)

    def _quantize(self, z: Tensor) -> Quantized:
        outs = [q._quantize(part) for q, part in zip(self.quantizers, self._parts(z))]
        stats: Stats = {f"{name}.{k}": value for k, out in enumerate(outs) for name, value in out.stats.items()}
        return Quantized(
            torch.cat([o.z_q for o in outs], dim=1),
            torch.stack([o.indices for o in outs], dim=1),
            torch.stack([o.loss for o in outs]).mean(),
            torch.stack([o.commitment for o in outs]).mean(),
            torch.stack([o.counts for o in outs]).sum(0),
            stats,
        )

    def indices_to_latent(self, indices: Tensor) -> Tensor:
        """(B, slices, *S) long -> (B, D, *S) fp32: the slices' codes side by side."""
        if indices.dim() < 2 or indices.shape[1] != self.slices:
            raise ValueError(f"expected indices (B, {self.slices}, ...), given shape {tuple(indices.shape)}")
        return torch.cat([q.indices_to_latent(indices[:, k]) for k, q in enumerate(self.quantizers)], dim=1)

    def update_statistics(self, stats: Stats) -> None:
        """Slice k gets the statistics named `*.k`, without the suffix; other names are ignored."""
        for k, q in enumerate(self.quantizers):
            suffix = f".{k}"
            q.update_statistics({name[: -len(suffix)]: v for name, v in stats.items() if name.endswith(suffix)})
