"""torchrun support: process-group setup, the DDP loss wrapper, and small collectives.

The same trainer runs in one process or under `torchrun --nproc_per_node N`: when torchrun's
environment (WORLD_SIZE > 1) is present, `setup` joins the process group (NCCL for CUDA, gloo
for the CPU) and every helper here degrades to a no-op in a single process.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> DistInfo:
    """Join torchrun's process group if there is one (idempotent); returns this process's place."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if not launched_by_torchrun():
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group(backend, device_id=device)
    else:
        dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def cleanup(wait: bool = True) -> None:
    """Leave the process group (call once at the end of a torchrun program).

    With `wait`, every rank waits for the others first: a rank that tears its group down while a
    peer is still finishing its last exchange (rank 0 writing the final checkpoint) can abort the
    peer. After an error, pass wait=False: the other ranks may never reach the barrier.
    """
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over ranks (float64, so eval totals stay exact enough)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_tensors(tensors: list[Tensor]) -> list[Tensor]:
    """Sum tensors over ranks with ONE all_reduce (flattened into one float64 buffer).

    Each result has its input's shape, dtype and device; integer counts stay exact up to 2**53.
    A single process gets its inputs back unchanged (no cast, no copy).
    """
    if not (dist.is_available() and dist.is_initialized()) or not tensors:
        return list(tensors)
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
    dist.all_reduce(flat)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].view(t.shape).to(t.dtype))
        start += t.numel()
    return out


def all_gather_object(obj: Any) -> list[Any]:
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def has_training_stats(model: nn.Module) -> bool:
    """Whether `model` declares training statistics (the class attribute `has_training_stats`).

    Such a model supplies `loss_and_stats(x, cond) -> (loss, {name: (sum, count)})` and
    `update_statistics({name: (sum, count)})`; the trainer sums the statistics over the step's
    micro-batches and over ranks, then hands them back to the model on every rank. A model that
    declares the attribute but lacks a method is refused with a TypeError. (A reconstruction
    model, `objective = "reconstruction"`, returns its statistics from `phase_loss` instead.)
    """
    declared = getattr(type(model), "has_training_stats", False)
    if declared is not True and declared is not False:
        raise TypeError(f"expected {type(model).__name__}.has_training_stats to be True or False, given {declared!r}")
    if declared:
        source = "phase_loss" if getattr(type(model), "objective", "likelihood") == "reconstruction" else "loss_and_stats"
        missing = [m for m in (source, "update_statistics") if not callable(getattr(model, m, None))]
        if missing:
            raise TypeError(f"{type(model).__name__} declares has_training_stats but lacks {', '.join(missing)}")
    return declared


Stats = dict[str, tuple[Tensor, Tensor]]


def check_stats(stats: Any, owner: str, method: str = "loss_and_stats") -> Stats:
    """Raise TypeError unless `stats` is {name: (sum tensor, count tensor)} with matching shapes."""
    if not isinstance(stats, dict):
        raise TypeError(f"expected {owner}.{method} to return statistics as a dict, given a {type(stats).__name__}")
    for name, value in stats.items():
        if (not isinstance(name, str) or not isinstance(value, tuple) or len(value) != 2
                or not all(isinstance(v, Tensor) for v in value) or value[0].shape != value[1].shape):
            raise TypeError(f"expected statistic {name!r} of {owner} as a (sum, count) pair of tensors of one shape, "
                            f"given {type(value).__name__}")
    return stats


def add_stats(total: Stats | None, stats: Stats) -> Stats:
    """Sum two {name: (sum, count)} dicts (the micro-batches of one step)."""
    if total is None:
        return {k: (s.detach(), c.detach()) for k, (s, c) in stats.items()}
    if set(total) != set(stats):
        raise ValueError(f"expected the same statistics from every micro-batch, given {sorted(total)} and {sorted(stats)}")
    return {k: (total[k][0] + s.detach(), total[k][1] + c.detach()) for k, (s, c) in stats.items()}


def all_reduce_stats(stats: Stats) -> Stats:
    """{name: (sum, count)} summed over ranks in one all_reduce (unchanged in one process)."""
    names = sorted(stats)
    flat = all_reduce_tensors([t for name in names for t in stats[name]])
    return {name: (flat[2 * i], flat[2 * i + 1]) for i, name in enumerate(names)}


@contextlib.contextmanager
def no_sync(module: nn.Module, skip: bool) -> Iterator[None]:
    """DDP's `no_sync()` (no gradient all-reduce in backward) when `skip`; a no-op otherwise."""
    if skip and hasattr(module, "no_sync"):
        with module.no_sync():
            yield
    else:
        yield


class LossModule(nn.Module):
    """forward(x, cond) = model.loss(x, cond), so DistributedDataParallel can wrap the loss.

    DDP synchronises gradients only for forward passes made through the DDP wrapper; wrapping
    this module keeps the trainer on the model's public contract (`loss`) while the forward still
    goes through DDP. A model that declares training statistics (`has_training_stats`) is called
    through `loss_and_stats` instead, and forward returns its (loss, stats) pair; given a `phase`
    (reconstruction models), forward returns `model.phase_loss(phase, x, step)`.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.with_stats = has_training_stats(model)

    def forward(self, x: Tensor, cond: Tensor | None = None, phase: str | None = None,
                step: int = 0) -> Tensor | tuple[Tensor, Stats]:
        if phase is not None:  # a reconstruction model (tokenizer): one optimizer phase's loss
            if cond is not None:  # only for a tokenizer that declares `uses_condition`
                return self.model.phase_loss(phase, x, step, cond=cond)
            return self.model.phase_loss(phase, x, step)
        if self.with_stats:
            return self.model.loss_and_stats(x, cond)
        return self.model.loss(x, cond)


def wrap_for_training(model: nn.Module, device: torch.device, info: DistInfo,
                      find_unused_parameters: bool = False) -> nn.Module:
    """The module the trainer calls for the loss: DDP(LossModule(model)) when distributed.

    The trainer may `torch.compile` the result; the weights it saves are always `model`'s own
    (a plain module: no `module.` or `_orig_mod.` prefixes).
    """
    loss_module = LossModule(model)
    if not info.enabled:
        return loss_module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(loss_module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)
