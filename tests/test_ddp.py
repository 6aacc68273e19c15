"""The trainer under torchrun: 2 CPU processes (gloo) end with identical weights.

Each rank starts from a different random init (DDP must broadcast rank 0's), sees its own half of
the data (DistributedSampler), and writes its weights fingerprint; only rank 0 writes the run.
With grad_accum=2 the gradient all-reduce is skipped (no_sync) on the first micro-batch of each
step; ARDM's training statistics (per-step losses) are summed over ranks, so every rank records
the same curve from all ranks' draws.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

import argen
from argen.checkpoint import weights_fingerprint

WORKER = textwrap.dedent('''
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    import argen
    from argen.checkpoint import weights_fingerprint
    from argen.registry import tiny_kwargs
    from argen.train import Trainer, TrainConfig
    from argen.train import distributed as D

    class Data(torch.utils.data.Dataset):
        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.x = ((torch.arange(8) % 4).expand(n, 1, 8, 8) + torch.randint(0, 2, (n, 1, 8, 8), generator=g)) % 4
            self.seen, self.epochs = [], []
        def __len__(self):
            return len(self.x)
        def __getitem__(self, i):
            self.seen.append(int(i))
            return self.x[i], torch.tensor(-1)
        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    out, rank = sys.argv[1], int(os.environ["RANK"])
    name, accum = sys.argv[2], int(sys.argv[3])
    torch.manual_seed(100 + rank)  # a different init on each rank: DDP must make them equal
    model = argen.create_model(name, image_shape=(1, 8, 8), levels=4, **tiny_kwargs(name))
    updates = []
    if name == "ardm":  # record what update_statistics is given
        inner = model.update_statistics
        def update(stats):
            updates.append(int(stats["step_loss"][1].sum()))
            inner(stats)
        model.update_statistics = update
    data = Data(32, 0)
    cfg = TrainConfig(steps=4, batch_size=4 // accum, grad_accum=accum, lr=1e-2, warmup_steps=0, progress=False,
                      tensorboard=False, sample_every=None, checkpoint_every=2, log_every=2, eval_examples=16,
                      eval_batch_size=4, ema_decay=0.9)
    trainer = Trainer(model, data, cfg, run_dir=os.path.join(out, "run"), eval_data=Data(16, 1), device="cpu")
    skipped = [0]
    if trainer.dist.enabled:
        no_sync = trainer.loss_module.no_sync
        def counting_no_sync():
            skipped[0] += 1
            return no_sync()
        trainer.loss_module.no_sync = counting_no_sync
    metrics = trainer.fit()
    stats = {k: v.tolist() for k, v in trainer.model.state_dict().items() if k.startswith("step_loss")}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"model": weights_fingerprint(trainer.model), "ema": weights_fingerprint(trainer.ema.module),
                   "seen": data.seen, "epochs": data.epochs, "test_bpd": metrics["test_bpd"],
                   "world": trainer.dist.world_size, "no_sync": skipped[0], "updates": updates,
                   "stats": stats}, f)
    D.cleanup()
''')


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name, accum", [("pixelcnn", 1), ("ardm", 2)])
def test_two_process_ddp_keeps_ranks_equal(tmp_path, name, accum):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script), str(tmp_path),
           name, str(accum)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    if done.returncode != 0:
        pytest.fail(f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["model"] == r1["model"] and r0["ema"] == r1["ema"]
    assert r0["test_bpd"] == r1["test_bpd"]  # eval is sharded and summed over ranks
    # each rank saw its own half of the 32 examples (4 steps x batch 4 = one epoch)
    assert set(r0["seen"][:16]).isdisjoint(r1["seen"][:16])
    assert sorted(r0["seen"][:16] + r1["seen"][:16]) == list(range(32))
    assert r0["epochs"] == r1["epochs"] == [0]
    assert r0["no_sync"] == r1["no_sync"] == 4 * (accum - 1)  # gradients all-reduced once per step
    if name == "ardm":
        # every step's statistics hold all 2 ranks x 2 micro-batches x 2 examples, on both ranks
        assert r0["updates"] == r1["updates"] == [8, 8, 8, 8]
        assert r0["stats"] == r1["stats"] and sum(r0["stats"]["step_loss_count"]) > 0
    # rank 0 wrote the run; the checkpoint is the trained weights every rank holds
    run = tmp_path / "run"
    assert weights_fingerprint(argen.load(run, prefer_ema=False)) == r0["model"]
    assert weights_fingerprint(argen.load(run)) == r0["ema"]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 4]  # train records at 2 and 4, then the final test record: no duplicates
