"""Reading network weight files (safetensors or torch state dicts) for the metric networks.

Its own module so that the networks (mnist_net, i3d) and the extractor factory (features) can all
use it without importing each other.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Tensors of a .safetensors file or a torch.save'd state dict (loaded with weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {str(path)!r}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle errors come in many types
        raise ValueError(f"cannot read {str(path)!r} as a state dict: {e}") from None
    for key in ("state_dict", "model", "model_state_dict"):  # common wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"expected {str(path)!r} to hold a state dict of tensors, given {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items()}
