"""Trainer features for bigger models: mixed precision, gradient accumulation, torch.compile.

Exact resume under each of them is in tests/test_train.py (`test_resume_equals_uninterrupted`);
DDP with grad_accum=2 in tests/test_ddp.py.
"""
from __future__ import annotations

import math

import pytest
import torch

import argen
from argen.checkpoint import weights_fingerprint
from argen.metrics.bpd import bits_per_dim
from argen.train import TrainConfig, Trainer
from argen.train import trainer as trainer_module
from argen.train.trainer import STATE_FILE, check_precision, read_state_file
from tests.test_train import TinyData, quiet, tiny_model


def _conv_dtypes(model) -> list[torch.dtype]:
    """Record the output dtype of the model's first convolution at every call."""
    seen: list[torch.dtype] = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    return seen


# ----- precision ----------------------------------------------------------------------------------
@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                              ("fp16", torch.float16)])
def test_precision_autocasts_training_only_and_keeps_weights_fp32(precision, dtype):
    data = TinyData(16)
    trainer = Trainer(tiny_model(), data, quiet(steps=3, precision=precision, ema_decay=0.9), device="cpu")
    seen = _conv_dtypes(trainer.model)
    trainer.fit()
    assert seen and set(seen) == {dtype}  # the training forward ran in the asked dtype
    for module in (trainer.model, trainer.ema.module):  # master weights and EMA stay fp32
        assert {p.dtype for p in module.parameters()} == {torch.float32}
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in trainer.model.parameters())
    assert {g["params"][0].dtype for g in trainer.optimizer.param_groups} == {torch.float32}
    assert trainer.scaler.is_enabled() == (precision == "fp16")

    # evaluation is fp32, even when called inside an autocast region, and exact
    seen = _conv_dtypes(trainer.eval_model)
    result = trainer.evaluate(data)
    assert seen and set(seen) == {torch.float32}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        again = trainer.evaluate(data)
    assert again == result
    with torch.no_grad():
        nats = -float(trainer.eval_model.log_prob(data.x).double().mean())
    assert result["bpd"] == pytest.approx(float(bits_per_dim(-nats, trainer.model.num_dims)), rel=1e-6)


def test_bf16_training_learns():
    data = TinyData()
    trainer = Trainer(tiny_model(), data, quiet(steps=30, precision="bf16", ema_decay=None), device="cpu")
    before = trainer.evaluate(data)["bpd"]
    trainer.fit()
    assert trainer.evaluate(data)["bpd"] < before - 0.2


def test_fp16_scaler_skips_overflowed_steps_and_is_checkpointed(tmp_path):
    """An overflowed fp16 gradient skips the update and halves the scale; the scale is saved and resumed."""
    run = tmp_path / "run"
    cfg = quiet(steps=3, precision="fp16", checkpoint_every=1, ema_decay=None, grad_clip=None)
    trainer = Trainer(tiny_model(), TinyData(24), cfg, run_dir=run, device="cpu")
    weight = next(trainer.model.parameters())
    calls = [0]

    def overflow_on_step_2(grad):
        calls[0] += 1
        return torch.full_like(grad, math.inf) if calls[0] == 2 else grad

    weight.register_hook(overflow_on_step_2)
    snapshots = []
    step = trainer.train_step
    trainer.train_step = lambda x, y: (snapshots.append(weights_fingerprint(trainer.model)), step(x, y))[1]
    trainer.fit()
    snapshots.append(weights_fingerprint(trainer.model))
    assert snapshots[1] != snapshots[0] and snapshots[2] == snapshots[1] and snapshots[3] != snapshots[2]
    assert trainer.scaler.get_scale() == 65536.0 / 2  # backed off once, not grown back (interval 2000)
    state = read_state_file(run / STATE_FILE)
    assert state["format_version"] == 3 and state["scaler"]["scale"] == 32768.0
    resumed = Trainer(tiny_model(), TinyData(24), quiet(steps=4, precision="fp16", ema_decay=None, grad_clip=None),
                      run_dir=run, device="cpu", resume=True)
    assert resumed.scaler.get_scale() == 32768.0
    # a run saved without fp16 has no scaler state; fp16 switched on at resume starts a fresh scale
    plain = tmp_path / "plain"
    Trainer(tiny_model(), TinyData(24), quiet(steps=2, ema_decay=None), run_dir=plain, device="cpu").fit()
    assert read_state_file(plain / STATE_FILE)["scaler"] is None
    fresh = Trainer(tiny_model(), TinyData(24), quiet(steps=3, precision="fp16", ema_decay=None), run_dir=plain,
                    device="cpu", resume=True)
    assert fresh.step == 2 and fresh.scaler.get_scale() == 65536.0
    fresh.fit()


def test_unsupported_precision_is_refused_naming_the_device(monkeypatch):
    assert check_precision("fp32", torch.device("cpu")) is None
    assert check_precision("bf16", torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    with pytest.raises(ValueError, match=r"train.precision='fp16'.*device 'cpu'"):
        Trainer(tiny_model(), TinyData(16), quiet(steps=1, precision="fp16"), device="cpu")
    monkeypatch.undo()
    # autocast that quietly computes in another dtype counts as unsupported too
    monkeypatch.setitem(trainer_module.AUTOCAST_DTYPES, "bf16", torch.float64)
    with pytest.raises(ValueError, match="device 'cpu'.*instead"):
        check_precision("bf16", torch.device("cpu"))
    with pytest.raises(ValueError, match="train.precision"):
        TrainConfig(precision="fp8").validate()


# ----- gradient accumulation ---------------------------------------------------------------------
def test_grad_accum_equals_one_big_batch():
    """batch 4 x grad_accum 2 takes the same examples per step as batch 8 and (up to rounding) the
    same gradient: the loss of each micro-batch is scaled by 1/grad_accum."""
    def trainer(**kw):
        return Trainer(tiny_model(), TinyData(24), quiet(steps=4, ema_decay=None, grad_clip=None, **kw), device="cpu")

    big, accum, small = trainer(batch_size=8), trainer(batch_size=4, grad_accum=2), trainer(batch_size=4)
    assert accum.steps_per_epoch == big.steps_per_epoch == 3 and small.steps_per_epoch == 6
    x, y = next(iter(accum.loader))
    assert x.shape[0] == 8  # the loader yields one step's examples, split into micro-batches
    calls = []
    inner = accum.model.loss
    accum.model.loss = lambda x, cond=None: (calls.append(x.shape[0]), inner(x, cond))[1]
    loss_big, _ = big.train_step(x, y)
    loss_accum, _ = accum.train_step(x, y)
    assert calls == [4, 4]
    assert float(loss_accum) == pytest.approx(float(loss_big), rel=1e-5)  # the mean over micro-batches
    for p, q in zip(big.model.parameters(), accum.model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6)
    accum.model.loss = inner
    big.fit(), accum.fit(), small.fit()
    for p, q in zip(big.model.parameters(), accum.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    assert weights_fingerprint(small.model) != weights_fingerprint(accum.model)
    with pytest.raises(ValueError, match="grad_accum"):
        Trainer(tiny_model(), TinyData(12), quiet(steps=1, batch_size=4, grad_accum=4), device="cpu")


def test_grad_accum_logs_the_effective_batch(tmp_path):
    import json

    trainer = Trainer(tiny_model(), TinyData(24), quiet(steps=2, batch_size=4, grad_accum=2, log_every=1,
                                                       ema_decay=None), run_dir=tmp_path / "run", device="cpu")
    seconds = []
    log = trainer._log_train
    trainer._log_train = lambda bar, a, b, count, s: (seconds.append(s), log(bar, a, b, count, s))[1]
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["examples_per_s"] for r in records if "examples_per_s" in r]
    assert rates == pytest.approx([8 / s for s in seconds])


# ----- torch.compile -----------------------------------------------------------------------------
def _recording_backend(graphs):
    """A torch.compile backend that records each captured graph and runs it as is (no codegen):
    the trainer's compile path (dynamo capture, the compiled wrapper, autograd through it) at no cost."""
    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    return backend


def _compile_run(tmp_path, name, steps, compile, resume=False):
    cfg = quiet(steps=steps, checkpoint_every=2, ema_decay=0.9, compile=compile, grad_clip=None)
    return Trainer(tiny_model(num_classes=3), TinyData(24), cfg, run_dir=tmp_path / name, device="cpu", resume=resume)


def test_compile_saves_plain_weights_and_resumes_either_way(tmp_path, monkeypatch):
    graphs: list = []
    monkeypatch.setattr(trainer_module, "COMPILE_OPTIONS", {"backend": _recording_backend(graphs)})
    torch._dynamo.reset()
    reference = _compile_run(tmp_path, "plain", 4, compile=False)
    reference.fit()
    assert not graphs

    compiled = _compile_run(tmp_path, "compiled", 2, compile=True)
    assert isinstance(compiled.loss_fn, torch._dynamo.eval_frame.OptimizedModule)
    compiled.fit()
    assert graphs  # the loss ran through torch.compile
    state = read_state_file(tmp_path / "compiled" / STATE_FILE)
    assert not [k for k in state["model"] if "_orig_mod" in k or k.startswith("module.")]
    assert set(state["model"]) == set(reference.model.state_dict())
    assert set(state["ema"]["module"]) == set(reference.model.state_dict())
    argen.load(tmp_path / "compiled")  # an ordinary run directory

    # compiled for 2 steps, resumed without compile: the same weights as 4 uncompiled steps
    resumed = _compile_run(tmp_path, "compiled", 4, compile=False, resume=True)
    assert resumed.step == 2 and resumed.loss_fn is resumed.loss_module
    resumed.fit()
    # and the other way: 2 plain steps, resumed with compile
    _compile_run(tmp_path, "other", 2, compile=False).fit()
    other = _compile_run(tmp_path, "other", 4, compile=True, resume=True)
    other.fit()
    for run in (resumed, other):
        for p, q in zip(reference.model.parameters(), run.model.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()
