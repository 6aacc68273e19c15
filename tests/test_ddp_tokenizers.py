"""Tokenizers under torchrun: 2 CPU processes (gloo) end with identical weights and codebooks.

The EMA codebook statistics are summed over ranks before the update, and data initialisation and
dead-code restarts are drawn on rank 0 and broadcast, so codebooks cannot drift apart even though
each rank sees other images. The VQ-GAN runs both of its phases (discriminator from step 1).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import argen
from argen.checkpoint import weights_fingerprint
from tests.test_ddp import _free_port

WORKER = textwrap.dedent('''
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    from argen.checkpoint import weights_fingerprint
    from argen.tokenizers import create_tokenizer, tiny_tokenizer_kwargs
    from argen.train import Trainer, TrainConfig
    from argen.train import distributed as D

    class Data(torch.utils.data.Dataset):
        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.x = ((torch.arange(8) % 4).expand(n, 1, 8, 8) + torch.randint(0, 2, (n, 1, 8, 8), generator=g)) % 4
        def __len__(self):
            return len(self.x)
        def __getitem__(self, i):
            return self.x[i], torch.tensor(-1)

    out, rank, name = sys.argv[1], int(os.environ["RANK"]), sys.argv[2]
    torch.manual_seed(100 + rank)  # a different init on each rank: DDP and the broadcasts must make them equal
    extra = json.loads(sys.argv[3])
    model = create_tokenizer(name, image_shape=(1, 8, 8), levels=4, **{**tiny_tokenizer_kwargs(name), **extra})
    cfg = TrainConfig(steps=4, batch_size=4, lr=1e-2, warmup_steps=0, progress=False, tensorboard=False,
                      sample_every=None, checkpoint_every=2, log_every=2, eval_examples=16, eval_batch_size=4,
                      ema_decay=None)
    trainer = Trainer(model, Data(32, 0), cfg, run_dir=os.path.join(out, "run"), eval_data=Data(16, 1), device="cpu")
    metrics = trainer.fit()
    buffers = {k: v.double().sum().item() for k, v in trainer.model.state_dict().items() if "codebook" in k or "embed" in k}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"model": weights_fingerprint(trainer.model), "psnr": metrics["test_psnr"],
                   "world": trainer.dist.world_size, "buffers": buffers}, f)
    D.cleanup()
''')


@pytest.mark.parametrize("name, extra", [("vqvae", {"restart_threshold": 100.0}), ("vqgan", {"disc_start": 1})])
def test_two_process_tokenizer_training_keeps_ranks_equal(tmp_path, name, extra):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script), str(tmp_path), name,
           json.dumps(extra)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    if done.returncode != 0:
        pytest.fail(f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["model"] == r1["model"] and r0["buffers"] == r1["buffers"]
    assert r0["psnr"] == r1["psnr"]  # eval is sharded and summed over ranks
    assert weights_fingerprint(argen.load(tmp_path / "run")) == r0["model"]
