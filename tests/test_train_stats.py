"""Training statistics through the trainer hook: ARDM's per-step losses L_t.

A model declares `has_training_stats`; the trainer calls `loss_and_stats`, sums the (sum, count)
statistics over a step's micro-batches (and ranks: tests/test_ddp.py), and hands them to the
model's `update_statistics` once per step. `loss` itself changes no buffer (tests/test_ardm.py).
"""
from __future__ import annotations

import json

import pytest
import torch

import argen
from argen.checkpoint import weights_fingerprint
from argen.train import Trainer
from argen.train import distributed as D
from tests.test_train import Killed, TinyData, quiet, tiny_model

TINY_ARDM = dict(hidden=8, channel_mults=(1,), blocks_per_level=1, attention=False, embed_dim=4)


def ardm(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return argen.create_model("ardm", image_shape=(1, 4, 4), levels=4, **TINY_ARDM, **kw)


def _data(n: int = 24) -> TinyData:
    return TinyData(n, shape=(1, 4, 4), num_classes=None)


def test_trainer_gathers_statistics_once_per_step_over_micro_batches():
    model = ardm()
    updates = []
    inner = model.update_statistics

    def update(stats):
        sums, counts = stats["step_loss"]
        updates.append((int(counts.sum()), float(sums.sum())))
        inner(stats)

    model.update_statistics = update
    model.loss = lambda *a, **k: pytest.fail("the trainer must call loss_and_stats, not loss")
    trainer = Trainer(model, _data(), quiet(steps=3, batch_size=4, grad_accum=2, ema_decay=0.9), device="cpu")
    trainer.fit()
    assert [n for n, _ in updates] == [8, 8, 8]  # one update per step, both micro-batches' 4 + 4 draws
    assert int(model.step_loss_count.sum()) > 0 and float(model.step_loss.abs().sum()) > 0
    # the EMA copy (the weights sampling uses) carries the same recorded curve
    assert torch.equal(trainer.ema.module.step_loss, model.step_loss)
    assert torch.equal(trainer.ema.module.step_loss_count, model.step_loss_count)


def test_update_statistics_keeps_the_running_mean_then_ema_rule():
    model = ardm(step_loss_decay=0.5)
    n = model.step_loss.numel()
    sums, counts = torch.zeros(n), torch.zeros(n, dtype=torch.long)
    sums[[0, 3]], counts[[0, 3]] = torch.tensor([6.0, 2.0]), torch.tensor([3, 1])
    model.update_statistics({"step_loss": (sums, counts)})
    assert model.step_loss[[0, 3]].tolist() == [2.0, 2.0] and model.step_loss_count.tolist()[:4] == [1, 0, 0, 1]
    assert float(model.step_loss[[1, 2, 4]].abs().sum()) == 0  # not drawn: untouched
    sums[0] = 12.0  # mean 4 at t=0: the second update averages (w = 1/2)
    model.update_statistics({"step_loss": (sums, counts)})
    assert float(model.step_loss[0]) == pytest.approx(3.0)
    sums[0] = 15.0  # mean 5: w = max(1/3, 1 - decay) = 0.5, the EMA
    model.update_statistics({"step_loss": (sums, counts)})
    assert float(model.step_loss[0]) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="step_loss"):
        model.update_statistics({"other": (sums, counts)})
    with pytest.raises(ValueError, match="shape"):
        model.update_statistics({"step_loss": (sums[:2], counts[:2])})
    # the buffers old checkpoints hold: same names and dtypes
    state = model.state_dict()
    assert state["step_loss"].dtype == torch.float32 and state["step_loss_count"].dtype == torch.long


def test_loss_and_stats_sums_match_the_loss():
    model = ardm().train()
    x = _data(8).x
    torch.manual_seed(3)
    loss, stats = model.loss_and_stats(x)
    sums, counts = stats["step_loss"]
    assert int(counts.sum()) == 8 and not sums.requires_grad
    # the loss is S * mean L_t over the batch; the stats hold the same draws, summed per t
    assert float(loss.detach()) == pytest.approx(model.num_stages * float(sums.sum()) / 8, rel=1e-5)
    torch.manual_seed(3)
    assert torch.equal(model.loss(x), loss)


def test_stats_helpers_and_declaration_checks():
    a = {"s": (torch.tensor([1.0, 2.0]), torch.tensor([1, 1]))}
    b = {"s": (torch.tensor([3.0, 0.0]), torch.tensor([2, 0]))}
    total = D.add_stats(D.add_stats(None, a), b)
    assert total["s"][0].tolist() == [4.0, 2.0] and total["s"][1].tolist() == [3, 1]
    assert D.all_reduce_stats(total) == total  # one process: unchanged
    with pytest.raises(ValueError, match="same statistics"):
        D.add_stats(total, {"t": a["s"]})
    with pytest.raises(TypeError, match="sum, count"):
        D.check_stats({"s": (torch.zeros(2), torch.zeros(3))}, "M")

    assert D.has_training_stats(ardm()) and not D.has_training_stats(tiny_model())

    class Declares(torch.nn.Module):  # not an ARModel: no default loss_and_stats / update_statistics
        has_training_stats = True

    with pytest.raises(TypeError, match="lacks loss_and_stats, update_statistics"):
        D.has_training_stats(Declares())

    class DeclaresBadly(type(tiny_model())):
        pass

    model = tiny_model()
    model.__class__ = DeclaresBadly
    DeclaresBadly.has_training_stats = "yes"
    with pytest.raises(TypeError, match="True or False"):
        Trainer(model, TinyData(16), quiet(steps=1), device="cpu")


def _kill_stats_on_call(model, call: int, exc: BaseException):
    inner, count = model.loss_and_stats, [0]

    def loss_and_stats(x, cond=None):
        count[0] += 1
        if count[0] == call:
            raise exc
        return inner(x, cond)

    model.loss_and_stats = loss_and_stats
    return model


@pytest.mark.parametrize("how", ["hard-kill", "keyboard-interrupt"])
def test_ardm_statistics_resume_exactly(tmp_path, how):
    """ARDM draws t and the order from the global RNG in every loss: a resumed run with
    grad_accum=2 must end with the same weights and the same recorded L_t."""
    def run(name, model=None, resume=False):
        cfg = quiet(steps=5, batch_size=4, grad_accum=2, checkpoint_every=2, ema_decay=0.9)
        return Trainer(model or ardm(), _data(), cfg, run_dir=tmp_path / name, device="cpu", resume=resume)

    full = run("full")
    full.fit()
    exc, expect = (Killed("kill -9"), 2) if how == "hard-kill" else (KeyboardInterrupt(), 3)
    with pytest.raises(type(exc)):
        run("killed", _kill_stats_on_call(ardm(), 8, exc)).fit()  # the 2nd micro-batch of step 4
    assert json.loads((tmp_path / "killed" / "config.json").read_text())["step"] == expect
    second = run("killed", resume=True)
    assert second.step == expect
    second.fit()
    assert torch.equal(second.model.step_loss, full.model.step_loss)
    assert torch.equal(second.model.step_loss_count, full.model.step_loss_count)
    assert weights_fingerprint(second.model) == weights_fingerprint(full.model)
    assert weights_fingerprint(second.ema.module) == weights_fingerprint(full.ema.module)
