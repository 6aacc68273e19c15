"""A small MNIST classifier whose features give an "MNIST FID" that runs offline in seconds.

Inception-v3 was trained on ImageNet photographs; on 28x28 grey digits its features say little
and cost a 299x299 forward pass each. This ~94k-parameter CNN, trained by
`scripts/train_mnist_features.py` on argen's embedded MNIST and shipped as
`assets/mnist_classifier.safetensors`, gives 128-d features (global average pool of the last
convolution) and 10 logits. Numbers computed with it compare argen models with each other on
digit data; they are NOT comparable to Inception FID values in papers.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from argen.metrics.weights import load_state_dict_file

ASSET_PATH = Path(__file__).resolve().parent / "assets" / "mnist_classifier.safetensors"


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class MnistClassifier(nn.Module):
    """(N, 1, 28, 28) in [0, 1] -> (features (N, 128), logits (N, 10))."""

    feature_dim = 128
    num_classes = 10

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(1, 32), nn.MaxPool2d(2),  # 14x14
            _conv(32, 64), nn.MaxPool2d(2),  # 7x7
            _conv(64, self.feature_dim),
        )
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected grey images (N, 1, H, W), given shape {tuple(x.shape)}")
        feats = self.body(2.0 * x - 1.0).mean((2, 3))
        return feats, self.head(feats)

    @staticmethod
    def matches(state: dict[str, Tensor]) -> bool:
        return set(state) == set(MnistClassifier().state_dict())


def load_mnist_classifier(path: str | Path | None = None, device: torch.device | str = "cpu") -> MnistClassifier:
    """The shipped classifier (or weights at `path`), in eval mode."""
    net = MnistClassifier()
    net.load_state_dict(load_state_dict_file(path or ASSET_PATH))
    return net.eval().to(device)
