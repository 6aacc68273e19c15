"""Autoregressive GAN frame prediction (Huang et al., Sensors 2022): no likelihood.

From one starter frame the generator rolls forward, each output frame fed back as the next input:

    f_{t+1} = m * f_t + (1 - m) * G(f_t, t)

The static mask m (where the frame stays as it is) comes from a small ResNet stream, the
difference image G from a U-Net stream (`argen.nn.unet.UNet`, the frame index as its embedding);
the variable mask is 1 - m, so the two masks are complementary and sum to one at every pixel.

Training ("model" phase) unrolls the clip from its first frame. Scheduled sampling: from step
`ss_start` the probability of feeding the model's own (detached) frame instead of the ground truth
ramps linearly to `ss_max` over `ss_ramp` steps, drawn per example and frame from torch's RNG (the
trainer saves and restores it, so a resumed run draws the same choices). The loss is L1 or L2
reconstruction of frames 1..T-1, plus from `disc_start` `adv_weight` times the hinge generator
losses of two PatchGANs (`argen.nn.discriminator`): a global one on whole frames and a local one
on the changing pixels (frames times the detached variable mask). The "disc" phase trains both
with the hinge loss on the frames the "model" phase produced for the same batch.

Pixels are long in [0, levels) in and out ([-1, 1] inside, rounded back). Evaluation
(`eval_stats` / `summarize`): predict the clip from its first `context_frames` frames and report
per-frame MSE ([0, 1] scale), PSNR (dB, peak 1) and SSIM of the predicted frames, as
`argen.metrics.video` computes them for every video model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.conditioning import CondSpec
from argen.fields import spec
from argen.metrics.video import frame_mse, frame_psnr, frame_ssim
from argen.models.base import PIXEL_LEVELS, Capabilities, VideoModelConfig
from argen.nn.discriminator import PatchDiscriminator, StepStash, hinge_d_loss, hinge_g_loss, patch_output_size
from argen.nn.pixels import mean_stat, to_levels, to_unit
from argen.nn.unet import TimestepEmbedding, UNet
from argen.registry import register_model

Stats = dict[str, tuple[Tensor, Tensor]]


@dataclass
class FrameGANConfig(VideoModelConfig):
    context_frames: int = spec(1, ge=1)  # frames given to eval / reconstruct (the paper: one starter frame)
    hidden: int = spec(32, ge=1)  # width of both streams
    mask_blocks: int = spec(2, ge=1)  # residual blocks of the static-mask (ResNet) stream
    unet_mults: tuple[int, ...] = spec((1, 2), ge=1, min_len=1)  # U-Net width per level, x hidden
    unet_blocks: int = spec(1, ge=1)  # residual blocks per U-Net level
    recon_loss: str = spec("l1", choices=("l1", "l2"))
    adv_weight: float = spec(0.1, ge=0)  # weight of the generator's adversarial terms
    disc_start: int = spec(1000, ge=0)  # the first step with the adversarial term and the "disc" phase
    disc_channels: int = spec(32, ge=1)
    disc_layers: int = spec(2, ge=1)
    ss_start: int = spec(0, ge=0)  # the first step of scheduled sampling
    ss_ramp: int = spec(1000, ge=0)  # steps over which the own-frame probability rises to ss_max
    ss_max: float = spec(1.0, ge=0, le=1)

    def validate(self) -> None:
        super().validate()
        t, _, h, w = self.video_shape
        if self.num_classes is not None:
            raise ValueError(f"model.num_classes: frame_gan is unconditional, expected None, given {self.num_classes}")
        if self.levels > PIXEL_LEVELS:
            raise ValueError(f"model.levels: frame_gan predicts pixels, expected at most {PIXEL_LEVELS} levels, "
                             f"given {self.levels}")
        if t < 2:
            raise ValueError(f"model.video_shape: frame prediction needs at least 2 frames, given {t}")
        if self.context_frames >= t:
            raise ValueError(f"model.context_frames: expected fewer than the {t} frames of a clip, given "
                             f"{self.context_frames}")
        if patch_output_size(min(h, w), self.disc_layers) < 1:
            raise ValueError(f"model.disc_layers: {self.disc_layers} discriminator layers leave no patch of a "
                             f"{h}x{w} frame; expected fewer layers or larger frames")


class FrameStep(NamedTuple):
    """One step of the generator on the [-1, 1] scale: the next frame, the static mask m, the
    variable mask 1 - m and the difference image G (frames (B, C, H, W), masks (B, 1, H, W))."""

    frame: Tensor
    static_mask: Tensor
    variable_mask: Tensor
    difference: Tensor


class _ResidualBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(ch, ch, 3, padding=1), nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.conv2(F.relu(self.conv1(F.relu(h))))


class _MaskStream(nn.Module):
    """The static-mask stream: a small ResNet from the frame to one mask logit per pixel."""

    def __init__(self, channels: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1),
                                 *(_ResidualBlock(hidden) for _ in range(blocks)),
                                 nn.ReLU(), nn.Conv2d(hidden, 1, 3, padding=1))

    def forward(self, frame: Tensor) -> Tensor:
        return torch.sigmoid(self.net(frame))


@register_model(
    "frame_gan",
    tiny=dict(video_shape=(4, 1, 16, 16), hidden=8, mask_blocks=1, unet_mults=(1, 2), unet_blocks=1,
              disc_channels=8, disc_layers=1, disc_start=2, ss_ramp=4),
    modality="video",
)
class FrameGAN(nn.Module):
    """AR GAN frame predictor (Huang et al. 2022): complementary masks, U-Net difference, two PatchGANs."""

    config_class = FrameGANConfig
    config: FrameGANConfig
    model_name: ClassVar[str] = "?"  # set by @register_model
    kind: ClassVar[str] = "model"
    objective: ClassVar[str] = "reconstruction"
    exact_likelihood: ClassVar[bool] = False
    has_training_stats: ClassVar[bool] = False
    capabilities: ClassVar[Capabilities] = Capabilities()
    optimizer_phases: ClassVar[tuple[str, ...]] = ("model", "disc")

    def __init__(self, config: FrameGANConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ValueError(f"expected a {self.config_class.__name__}, given {type(config).__name__}")
        config.validate()
        self.config = config
        c = self.channels
        self.mask_stream = _MaskStream(c, config.hidden, config.mask_blocks)
        self.frame_embedding = TimestepEmbedding(config.hidden, scale=float(self.data_shape[0]))
        self.difference_stream = UNet(c, c, config.hidden, config.hidden, config.unet_mults, config.unet_blocks)
        self.global_disc = PatchDiscriminator(c, config.disc_channels, config.disc_layers)
        self.local_disc = PatchDiscriminator(c, config.disc_channels, config.disc_layers)
        # this step's generated frames, for the "disc" phase (not a submodule, never saved)
        self._stash = StepStash()

    # ----- facts -----------------------------------------------------------------------------------
    @property
    def data_shape(self) -> tuple[int, ...]:
        """(T, C, H, W) of one clip."""
        return tuple(self.config.data_shape)

    @property
    def channels(self) -> int:
        return self.data_shape[1]

    @property
    def position_shape(self) -> tuple[int, ...]:
        t, _, h, w = self.data_shape
        return (t, h, w)

    @property
    def levels(self) -> int:
        return self.config.levels

    @property
    def num_dims(self) -> int:
        return math.prod(self.data_shape)

    @property
    def cond_spec(self) -> CondSpec:
        """Unconditional (the context frames are `predict`'s input, not a condition)."""
        return CondSpec.none()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ----- input checks ------------------------------------------------------------------------------
    def check_input(self, x: Tensor, cond: Tensor | None = None) -> None:
        """Raise ValueError naming expected and given dtype / shape / range of a clip batch."""
        if not isinstance(x, Tensor):
            raise ValueError(f"expected a torch.Tensor, given {type(x).__name__}")
        if x.dtype != torch.long:
            raise ValueError(f"expected dtype torch.long (integer pixel values), given {x.dtype}")
        if x.dim() != 5 or tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"expected shape (B, {', '.join(map(str, self.data_shape))}), given {tuple(x.shape)}")
        self._check_range(x)
        self.cond_spec.check(cond, x.shape[0])

    def _check_range(self, x: Tensor) -> None:
        if x.numel():
            lo, hi = int(x.min()), int(x.max())
            if lo < 0 or hi >= self.levels:
                raise ValueError(f"expected values in [0, {self.levels - 1}], given range [{lo}, {hi}]")

    def check_context(self, context: Tensor) -> None:
        """Raise ValueError unless `context` is (B, k, C, H, W) long with 1 <= k < T, values in range."""
        t, c, h, w = self.data_shape
        if not isinstance(context, Tensor) or context.dim() != 5 or tuple(context.shape[2:]) != (c, h, w) \
                or not 1 <= context.shape[1] < t:
            given = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
            raise ValueError(f"expected context frames (B, k, {c}, {h}, {w}) with 1 <= k < {t}, given {given}")
        if context.dtype != torch.long:
            raise ValueError(f"expected context of dtype torch.long (integer pixel values), given {context.dtype}")
        self._check_range(context)

    # ----- the generator ---------------------------------------------------------------------------------
    def step(self, frame: Tensor, t: int) -> FrameStep:
        """f_{t+1} from f_t (B, C, H, W) on the [-1, 1] scale: m * f_t + (1 - m) * G(f_t, t)."""
        m = self.mask_stream(frame)
        emb = self.frame_embedding(torch.full((frame.shape[0],), t / self.data_shape[0], device=frame.device))
        g = torch.tanh(self.difference_stream(frame, emb))
        variable = 1.0 - m
        return FrameStep(m * frame + variable * g, m, variable, g)

    def scheduled_sampling_probability(self, step: int) -> float:
        """The probability of feeding the model's own frame instead of the ground truth at `step`:
        0 before `ss_start`, then rising linearly to `ss_max` over `ss_ramp` steps."""
        cfg = self.config
        if step < cfg.ss_start:
            return 0.0
        if cfg.ss_ramp == 0:
            return cfg.ss_max
        return cfg.ss_max * min(1.0, (step - cfg.ss_start + 1) / cfg.ss_ramp)

    def own_frame_choices(self, step: int, batch: int, device: torch.device | None = None) -> Tensor:
        """(B, T - 2) bool: where the input of frames 1..T-2 is the model's own previous output,
        drawn from torch's RNG with `scheduled_sampling_probability(step)`."""
        p = self.scheduled_sampling_probability(step)
        u = torch.rand(batch, self.data_shape[0] - 2, device=device if device is not None else self.device)
        return u < p

    def rollout(self, xf: Tensor, own: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Teacher-forced unroll of clips xf (B, T, C, H, W) on the [-1, 1] scale from their first
        frame; `own` (B, T-2) bool feeds the model's (detached) output instead of the truth.
        Returns the predicted frames 1..T-1 (B, T-1, C, H, W) and their variable masks (B, T-1, 1, H, W)."""
        t_len = xf.shape[1]
        frame = xf[:, 0]
        frames, masks = [], []
        for t in range(t_len - 1):
            out = self.step(frame, t)
            frames.append(out.frame)
            masks.append(out.variable_mask)
            if t + 1 < t_len - 1:
                truth = xf[:, t + 1]
                if own is None:
                    frame = truth
                else:
                    frame = torch.where(own[:, t, None, None, None], out.frame.detach(), truth)
        return torch.stack(frames, 1), torch.stack(masks, 1)

    @torch.no_grad()
    def predict(self, context: Tensor, cond: Tensor | None = None, config: Any = None) -> Tensor:
        """Given the first k frames (B, k, C, H, W) long, generate the rest of the clip from the
        last of them, each output fed back; returns (B, T, C, H, W) long with the k frames kept.

        Deterministic: `config` (sampling options) must be None."""
        self.check_context(context)
        self.cond_spec.check(cond, context.shape[0])
        if config is not None:
            raise ValueError(f"frame_gan predicts deterministically: expected config=None, given {config!r}")
        b, k = context.shape[:2]
        t_len = self.data_shape[0]
        was_training = self.training
        self.eval()
        try:
            out = torch.empty((b, *self.data_shape), dtype=torch.long, device=context.device)
            out[:, :k] = context
            frame = to_unit(context[:, -1], self.levels)
            for t in range(k - 1, t_len - 1):
                frame = self.step(frame, t).frame
                out[:, t + 1] = to_levels(frame, self.levels)
        finally:
            self.train(was_training)
        return out

    def reconstruct(self, x: Tensor) -> Tensor:
        """The clip predicted from its first `context_frames` frames (the training picture)."""
        self.check_input(x)
        return self.predict(x[:, :self.config.context_frames])

    def sample(self, n: int, cond: Tensor | None = None, config: Any = None, **options: Any) -> Tensor:
        raise ValueError("frame_gan has no distribution to sample from without context frames: expected "
                         "predict(context (B, k, C, H, W)), given sample()")

    # ----- training protocol -----------------------------------------------------------------------
    def training_phases(self, step: int) -> tuple[str, ...]:
        return ("model", "disc") if step >= self.config.disc_start else ("model",)

    def check_phase(self, phase: str) -> None:
        if phase not in self.optimizer_phases:
            raise ValueError(f"expected a phase in {list(self.optimizer_phases)}, given {phase!r}")

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        self.check_phase(phase)
        disc = list(self.global_disc.parameters()) + list(self.local_disc.parameters())
        if phase == "disc":
            return disc
        ids = {id(p) for p in disc}
        return [p for p in self.parameters() if id(p) not in ids]

    def phase_loss(self, phase: str, x: Tensor, step: int) -> tuple[Tensor, Stats]:
        self.check_phase(phase)
        self.check_input(x)
        if phase == "disc":
            return self._disc_loss(x, step)
        n = x.shape[0]
        xf = to_unit(x, self.levels)
        own = self.own_frame_choices(step, n, x.device)
        frames, masks = self.rollout(xf, own)
        target = xf[:, 1:]
        rec = (frames - target).abs().mean() if self.config.recon_loss == "l1" else (frames - target).pow(2).mean()
        loss = rec
        g_loss = torch.zeros((), device=x.device)
        if step >= self.config.disc_start:
            fake, v = frames.flatten(0, 1), masks.flatten(0, 1).detach()
            g_loss = hinge_g_loss(self.global_disc(fake)) + hinge_g_loss(self.local_disc(fake * v))
            loss = loss + self.config.adv_weight * g_loss
        mse = ((frames.detach() - target) / 2).pow(2).mean()  # on the [0, 1] scale
        stats = {"rec": mean_stat(rec, n), "mse": mean_stat(mse, n), "g_loss": mean_stat(g_loss, n),
                 "own_frames": mean_stat(own.float().mean() if own.numel() else torch.zeros((), device=x.device), n)}
        if step >= self.config.disc_start:  # only the discriminator phase reads it
            self._stash.put(step, x, frames.detach(), masks.detach())
        return loss, stats

    def _disc_loss(self, x: Tensor, step: int) -> tuple[Tensor, Stats]:
        pair = self._stash.get(x, step)
        xf = to_unit(x, self.levels)
        if pair is None:  # no "model" phase before it on this batch: unroll once, without gradient
            with torch.no_grad():
                pair = self.rollout(xf, self.own_frame_choices(step, x.shape[0], x.device))
        fake, v = pair[0].flatten(0, 1), pair[1].flatten(0, 1)
        real = xf[:, 1:].flatten(0, 1)
        real_g, fake_g = self.global_disc(real), self.global_disc(fake)
        d_loss = hinge_d_loss(real_g, fake_g) + hinge_d_loss(self.local_disc(real * v), self.local_disc(fake * v))
        n = x.shape[0]
        return d_loss, {"d_loss": mean_stat(d_loss, n), "logits_real": mean_stat(real_g.mean(), n),
                        "logits_fake": mean_stat(fake_g.mean(), n)}

    def update_statistics(self, stats: Stats) -> None:
        """Nothing is gathered in training."""

    # ----- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def eval_stats(self, x: Tensor) -> Stats:
        """Per predicted frame (frames context_frames..T-1, predicted from the first context_frames):
        sums over the batch of the squared error ([0, 1] scale) and its count, of PSNR and of SSIM
        (each with its count), as (T - k,) vectors."""
        self.check_input(x)
        k, t_len = self.config.context_frames, self.data_shape[0]
        dev = x.device
        if x.shape[0] == 0:
            zeros = torch.zeros(t_len - k, dtype=torch.float64, device=dev)
            return {"sq_err": (zeros, zeros.clone()), "psnr": (zeros.clone(), zeros.clone()),
                    "ssim": (zeros.clone(), zeros.clone())}
        # the shared metrics build their SSIM window on the CPU: compute there, sum on x's device
        pred, truth = self.predict(x[:, :k])[:, k:].cpu(), x[:, k:].cpu()
        mse = frame_mse(pred, truth, self.levels).to(dev)  # (B, T-k)
        psnr = frame_psnr(pred, truth, self.levels).to(dev)
        s = frame_ssim(pred, truth, self.levels).to(dev)
        values = truth[0, 0].numel()
        b = torch.full((t_len - k,), float(x.shape[0]), dtype=torch.float64, device=dev)
        return {"sq_err": (mse.sum(0) * values, b * values), "psnr": (psnr.sum(0), b.clone()),
                "ssim": (s.sum(0), b.clone())}

    def summarize(self, totals: Stats) -> dict[str, float]:
        """mse, psnr, ssim over every predicted frame, and per frame index t: mse_t, psnr_t, ssim_t."""
        out: dict[str, float] = {}
        k = self.config.context_frames
        for name in ("mse", "psnr", "ssim"):
            key = "sq_err" if name == "mse" else name
            if key not in totals:
                continue
            total, count = (v.double().reshape(-1) for v in totals[key])
            out[name] = float(total.sum() / count.sum().clamp_min(1.0))
            for i in range(total.numel()):
                out[f"{name}_{k + i}"] = float(total[i] / count[i].clamp_min(1.0))
        return out

    def extra_repr(self) -> str:
        return f"name={self.model_name!r}, data_shape={self.data_shape}, levels={self.levels}"
