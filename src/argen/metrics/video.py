"""Video metrics: per-frame MSE / PSNR / SSIM of predictions, nats per predicted frame, and the
feature network behind argen's Moving MNIST video Fréchet distance.

- `frame_mse`, `frame_psnr`, `frame_ssim`: (B, T) values for integer clips (B, T, C, H, W) in
  [0, levels), computed on intensities scaled to [0, 1] (so PSNR's peak is 1). SSIM is Wang et
  al.'s: an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, statistics over the
  'valid' window positions (no padding), the map averaged, colour channels averaged. Frames
  smaller than 11 px use the largest odd window that fits (same sigma), so tiny test clips still
  get a number; at 32x32 and 64x64 it is the standard SSIM.
- `prediction_nats(model, x, context)`: VPN's protocol, -log p(frames k.. | the first k frames)
  from `log_prob(x, reduce=False)` (B, T, H, W) summed over t >= k, as nats per predicted frame
  and bits per predicted dimension.
- `MovingMnistVideoNet`: a ~73k-parameter 3-D conv network trained by
  `scripts/train_video_features.py` on generated Moving MNIST (which digits are in the clip and
  which way they move) and shipped as `assets/moving_mnist_video.safetensors`. Its 64-d features
  give `argen fvd RUN --features moving-mnist`: "moving-mnist features, not comparable to I3D FVD".
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.metrics.features import FeatureExtractor, file_sha256, to_grey, to_unit
from argen.metrics.weights import load_state_dict_file
from argen.positions import frame_major

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
#: PSNR of identical frames would be infinite; the MSE is floored here (100 dB).
MSE_FLOOR = 1e-10


def _check_pair(pred: Tensor, truth: Tensor, levels: int) -> tuple[Tensor, Tensor]:
    if not isinstance(pred, Tensor) or not isinstance(truth, Tensor):
        raise ValueError(f"expected tensors, given {type(pred).__name__} and {type(truth).__name__}")
    if pred.shape != truth.shape or pred.dim() != 5:
        raise ValueError(f"expected prediction and truth of one shape (B, T, C, H, W), given {tuple(pred.shape)} "
                         f"and {tuple(truth.shape)}")
    to_unit(pred, levels), to_unit(truth, levels)  # dtype and range checks
    return pred.double() / (levels - 1), truth.double() / (levels - 1)  # float64 throughout


def frame_mse(pred: Tensor, truth: Tensor, levels: int) -> Tensor:
    """(B, T) mean squared error per frame, intensities in [0, 1]."""
    p, t = _check_pair(pred, truth, levels)
    return (p - t).pow(2).flatten(2).mean(2)


def frame_psnr(pred: Tensor, truth: Tensor, levels: int) -> Tensor:
    """(B, T) peak signal-to-noise ratio per frame in dB (peak 1; identical frames give 100 dB)."""
    return -10.0 * torch.log10(frame_mse(pred, truth, levels).clamp(min=MSE_FLOOR))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """The normalized 1-D Gaussian of `size` taps (float64); SSIM's 2-D window is its outer product."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(x: Tensor, g: Tensor) -> Tensor:
    """Separable 'valid' Gaussian filtering of (N, 1, H, W)."""
    k = len(g)
    x = F.conv2d(x, g.view(1, 1, k, 1))
    return F.conv2d(x, g.view(1, 1, 1, k))


def ssim_window_size(h: int, w: int) -> int:
    """11, or the largest odd size <= min(h, w) for smaller frames."""
    size = min(SSIM_WINDOW, h, w)
    return size if size % 2 else size - 1


def frame_ssim(pred: Tensor, truth: Tensor, levels: int) -> Tensor:
    """(B, T) structural similarity per frame (channels averaged); see the module doc."""
    p, t = _check_pair(pred, truth, levels)
    b, n, c, h, w = p.shape
    g = gaussian_window(ssim_window_size(h, w))
    x, y = p.reshape(-1, 1, h, w), t.reshape(-1, 1, h, w)
    mx, my = _filter_valid(x, g), _filter_valid(y, g)
    sxx = _filter_valid(x * x, g) - mx * mx
    syy = _filter_valid(y * y, g) - my * my
    sxy = _filter_valid(x * y, g) - mx * my
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return smap.flatten(1).mean(1).view(b, n, c).mean(2)


def frame_metrics(pred: Tensor, truth: Tensor, levels: int) -> dict[str, list[float]]:
    """Per-frame MSE, PSNR and SSIM averaged over the batch: {metric: [frame 0, frame 1, ...]}."""
    return {"mse": frame_mse(pred, truth, levels).mean(0).tolist(),
            "psnr": frame_psnr(pred, truth, levels).mean(0).tolist(),
            "ssim": frame_ssim(pred, truth, levels).mean(0).tolist()}


@torch.no_grad()
def prediction_nats(model: Any, x: Tensor, context: int, frames: int | None = None, cond: Any = None) -> dict[str, Any]:
    """-log p(frames [k, k + frames) | everything before them) of the true clips `x` (B, T, C, H, W).

    From `model.log_prob(x, reduce=False)` (B, T, H, W): a model's conditional at a position
    depends only on the positions before it in its order, so summing t >= k gives the likelihood
    of the future given the first k true frames when that order is frame by frame (`conditional`;
    a subscale order interleaves frames, and the sum is then another quantity). Returns nats per
    predicted frame (mean over clips), per-frame nats, bits per predicted dimension, whether the
    likelihood is exact, and whether the sum is that conditional.
    """
    shape = tuple(model.data_shape)
    if len(shape) != 4:
        raise ValueError(f"prediction_nats is for video models (data (T, C, H, W)), given data shape {shape}")
    t_max = shape[0]
    frames = t_max - context if frames is None else frames
    if not (isinstance(context, int) and isinstance(frames, int)) or context < 1 or frames < 1 or context + frames > t_max:
        raise ValueError(f"expected context k >= 1 and frames n >= 1 with k + n <= {t_max} (the model's clip length), "
                         f"given k={context}, n={frames}")
    per_pos = model.log_prob(x, cond, reduce=False)  # (B, T, H, W)
    if tuple(per_pos.shape[1:]) != (t_max, *shape[2:]):
        raise ValueError(f"expected log_prob(reduce=False) of shape (B, {t_max}, {shape[2]}, {shape[3]}), "
                         f"given {tuple(per_pos.shape)}")
    per_frame = -per_pos[:, context : context + frames].double().flatten(2).sum(2)  # (B, n)
    dims = frames * math.prod(shape[1:])
    nats = per_frame.sum(1)
    return {"context": context, "frames": frames, "nats_per_frame": float(nats.mean() / frames),
            "nats_by_frame": per_frame.mean(0).tolist(), "bits_per_dim": float(nats.mean() / (dims * math.log(2))),
            "exact": bool(getattr(model, "exact_likelihood", True)), "n": int(x.shape[0]),
            "conditional": frame_major(model.generation_order())}


# ----- the Moving MNIST video feature network --------------------------------------------------

ASSET_PATH = Path(__file__).resolve().parent / "assets" / "moving_mnist_video.safetensors"
#: Frames are resized to this side before the network (64x64 Moving MNIST by a 2x2 area average).
VIDEO_FEATURE_SIZE = 32
VIDEO_FEATURE_LABEL = "moving-mnist features, not comparable to I3D FVD (argen's small 3-D conv net on Moving MNIST, 64-d)"


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU())


class MovingMnistVideoNet(nn.Module):
    """(N, 1, T, 32, 32) in [0, 1] -> (features (N, 64), logits (N, 18)).

    Logits: 10 for the digits present, 8 for the direction bins the digits start moving in (each
    a multi-label target). Any T >= 1: time is never strided, the features average over it.
    """

    feature_dim = 64
    num_outputs = 18

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _block(1, 8), nn.MaxPool3d((1, 2, 2)),  # 16x16
            _block(8, 16), nn.MaxPool3d((1, 2, 2)),  # 8x8
            _block(16, 32), nn.MaxPool3d((1, 2, 2)),  # 4x4
            _block(32, self.feature_dim),
        )
        self.head = nn.Linear(self.feature_dim, self.num_outputs)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 5 or x.shape[1] != 1:
            raise ValueError(f"expected grey clips (N, 1, T, H, W), given shape {tuple(x.shape)}")
        feats = self.body(2.0 * x - 1.0).mean((2, 3, 4))
        return feats, self.head(feats)

    @staticmethod
    def matches(state: dict[str, Tensor]) -> bool:
        return set(state) == set(MovingMnistVideoNet().state_dict())


def clips_to_network_input(x: Tensor, levels: int, size: int = VIDEO_FEATURE_SIZE) -> Tensor:
    """Integer clips (B, T, C, H, W) -> (B, 1, T, size, size) grey in [0, 1] (area average when the
    side is a multiple of `size`, antialiased bilinear otherwise)."""
    if x.dim() != 5:
        raise ValueError(f"expected video clips (B, T, C, H, W), given shape {tuple(x.shape)}")
    b, t = x.shape[:2]
    frames = to_grey(to_unit(x, levels).flatten(0, 1))
    h, w = frames.shape[-2:]
    if (h, w) != (size, size):
        if h == w and h % size == 0:
            frames = F.avg_pool2d(frames, h // size)
        else:
            frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return frames.reshape(b, t, 1, size, size).transpose(1, 2).contiguous()


class MovingMnistVideoFeatures(FeatureExtractor):
    """Video features of `MovingMnistVideoNet` for a Fréchet distance between sets of clips."""

    def preprocess(self, x: Tensor, levels: int) -> Tensor:
        return clips_to_network_input(x, levels)


def load_video_feature_net(path: str | os.PathLike[str] | None = None, device: torch.device | str = "cpu") -> MovingMnistVideoNet:
    """The shipped network (or weights at `path`), in eval mode."""
    path = Path(path) if path is not None else ASSET_PATH
    if not path.is_file():
        raise FileNotFoundError(f"the Moving MNIST video feature weights are missing at {str(path)!r}; "
                                "regenerate them with `python scripts/train_video_features.py`")
    state = load_state_dict_file(path)
    if not MovingMnistVideoNet.matches(state):
        raise ValueError(f"expected {str(path)!r} to hold MovingMnistVideoNet weights, given keys like "
                         f"{', '.join(sorted(state)[:4])}")
    net = MovingMnistVideoNet()
    net.load_state_dict(state)
    return net.eval().to(device)


def moving_mnist_video_extractor(path: str | os.PathLike[str] | None = None,
                                 device: torch.device | str = "cpu") -> MovingMnistVideoFeatures:
    """The feature extractor of `--features moving-mnist` (name `moving_mnist`: metrics fvd_moving_mnist, ...)."""
    path = Path(path) if path is not None else ASSET_PATH
    net = load_video_feature_net(path)
    return MovingMnistVideoFeatures(net, name="moving_mnist", label=VIDEO_FEATURE_LABEL,
                                    identity=f"moving_mnist_video:{file_sha256(path)}", has_logits=False,
                                    logits_note="Its outputs are multi-label (digits, directions), not classes.").to(device)
