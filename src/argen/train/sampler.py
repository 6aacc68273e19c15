"""A data order that can be resumed mid-epoch, sharded per rank like DistributedSampler.

The order of epoch e is a permutation drawn from seed + e (DistributedSampler's rule), so it
depends on nothing but (seed, epoch, rank, world size). Resuming at step s starts epoch
s // steps_per_epoch at batch s % steps_per_epoch without replaying the skipped batches.
"""
from __future__ import annotations

from typing import Iterator

from torch.utils.data import DistributedSampler, Sampler


class ResumableSampler(Sampler[int]):
    """Indices of this rank's shard for one epoch, starting at a given batch.

    `batch_size` is one optimizer step's examples per process (the trainer's batch_size x grad_accum).
    """

    def __init__(self, dataset_len: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True) -> None:
        if dataset_len < 1:
            raise ValueError(f"expected a non-empty dataset, given {dataset_len} examples")
        self._inner = DistributedSampler(range(dataset_len), num_replicas=world_size, rank=rank, shuffle=shuffle,
                                         seed=seed, drop_last=False)
        self.batch_size = batch_size
        self.steps_per_epoch = len(self._inner) // batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"expected at least {batch_size} examples per process (one step's batch: batch_size x grad_accum), "
                f"given {len(self._inner)} ({dataset_len} examples over {world_size} process(es)); "
                f"lower the batch size or grad_accum"
            )
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate epoch `epoch` from batch `start_batch` on."""
        if not 0 <= start_batch < self.steps_per_epoch:
            raise ValueError(f"expected start_batch in [0, {self.steps_per_epoch}), given {start_batch}")
        self.epoch, self.start_batch = epoch, start_batch
        self._inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        indices = list(self._inner)[: self.steps_per_epoch * self.batch_size]
        return iter(indices[self.start_batch * self.batch_size:])

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_batch) * self.batch_size
