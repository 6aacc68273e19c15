"""Device choice in one place: CUDA when present, overridable, one GPU per torchrun process."""
from __future__ import annotations

import os

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def local_rank() -> int:
    """This process's index on its machine under torchrun (0 when not launched by torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn "auto" | "cpu" | "cuda" | "cuda:N" into a torch.device.

    "auto" picks CUDA when it is available, else the CPU. A bare "cuda" under torchrun means the
    GPU of this process (LOCAL_RANK), so every process of a multi-GPU run gets its own card.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"expected a device this machine has (cpu), given {spec!r}: CUDA is not available")
        if spec == "cuda":
            index = local_rank() if "LOCAL_RANK" in os.environ else torch.cuda.current_device()
        else:
            try:
                index = int(spec.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"expected a device like 'cuda:0', given {spec!r}") from None
        count = torch.cuda.device_count()
        if not 0 <= index < count:
            raise ValueError(f"expected a CUDA device index in [0, {count - 1}], given {index}")
        return torch.device("cuda", index)
    raise ValueError(f"expected a device among {DEVICE_CHOICES} (or 'cuda:N'), given {spec!r}")


def choose_threads(spec: str | int | None = "auto") -> int:
    """CPU threads for this process: an explicit count, or "auto".

    "auto" uses the cores that are idle: the CPU count less the 1-minute load average (rounded),
    shared among the torchrun processes of this machine, at least 1 and at most torch's default.
    On an idle 2-core machine that is 2 (1.7x faster than 1 for the demo's model); on a machine
    whose cores other jobs keep busy it is 1, because oversubscribed threads run several times
    slower than one (measured on 2 cores: see the README's demo notes).
    """
    if spec is None or spec == "auto":
        cores = os.cpu_count() or 1
        try:
            busy = int(os.getloadavg()[0] + 0.5)
        except (OSError, AttributeError):
            busy = 0
        per_process = max(1, (cores - busy) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
        return max(1, min(torch.get_num_threads(), per_process))
    try:
        n = int(spec)
    except (TypeError, ValueError):
        raise ValueError(f"expected --threads auto or a count >= 1, given {spec!r}") from None
    if n < 1 or isinstance(spec, bool):
        raise ValueError(f"expected --threads auto or a count >= 1, given {spec!r}")
    return n
