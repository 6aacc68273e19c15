"""Trainer tests: learning, checkpoints, exact resume, EMA, LR schedules, clipping, labels, epochs."""
from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from torch.utils.data import Dataset

import argen
from argen.checkpoint import weights_fingerprint
from argen.registry import tiny_kwargs
from argen.train import EMA, TrainConfig, Trainer, lr_at, lr_factor, parse_overrides
from argen.train.config import coerce_fields, load_config_file


class TinyData(Dataset):
    """Structured 8x8 images with 4 levels (stripes plus noise) and labels: learnable in a few steps.

    Same attributes as an argen.data dataset; records the epochs it was told about.
    """

    def __init__(self, n: int = 32, shape=(1, 8, 8), levels: int = 4, num_classes: int | None = 3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        c, h, w = shape
        stripes = (torch.arange(w) % levels).expand(c, h, w)
        noise = torch.randint(0, 2, (n, c, h, w), generator=g)
        self.x = (stripes + noise) % levels
        self.y = torch.randint(0, num_classes or 1, (n,), generator=g) if num_classes else torch.full((n,), -1)
        self.name, self.shape, self.levels, self.num_classes = "tiny", tuple(shape), levels, num_classes
        self.epochs: list[int] = []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def tiny_model(num_classes: int | None = None, seed: int = 0):
    torch.manual_seed(seed)
    return argen.create_model("pixelcnn", image_shape=(1, 8, 8), levels=4, num_classes=num_classes,
                              **tiny_kwargs("pixelcnn"))


def quiet(**kw) -> TrainConfig:
    base = dict(batch_size=8, lr=1e-2, warmup_steps=0, progress=False, tensorboard=False, sample_every=None,
                eval_examples=16, eval_batch_size=8)
    base.update(kw)
    return TrainConfig(**base)


def test_trainer_lowers_loss():
    data = TinyData()
    trainer = Trainer(tiny_model(), data, quiet(steps=30, ema_decay=None), device="cpu")
    before = trainer.evaluate(data)["bpd"]
    metrics = trainer.fit()
    after = trainer.evaluate(data)["bpd"]
    assert metrics["step"] == 30 and trainer.step == 30
    assert after < before - 0.2, (before, after)
    assert trainer.model.training  # evaluation put it back into training mode


def test_checkpoint_files_exist_and_load(tmp_path):
    data = TinyData()
    run = tmp_path / "run"
    trainer = Trainer(tiny_model(), data, quiet(steps=6, checkpoint_every=2, log_every=2, tensorboard=True,
                                               sample_every=3, num_samples=4),
                      run_dir=run, eval_data=TinyData(16, seed=1), device="cpu", extra={"data": "tiny"})
    metrics = trainer.fit()
    for name in ("config.json", "model.safetensors", "ema.safetensors", "train_state.pt", "metrics.jsonl"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000003.png", "step_0000006.png"]
    assert any((run / "tb").iterdir())
    desc = json.loads((run / "config.json").read_text())
    assert desc["step"] == 6 and desc["data"] == "tiny" and desc["train"]["steps"] == 6
    assert desc["metrics"]["test_bpd"] == pytest.approx(metrics["test_bpd"])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train_bpd" in r] == [2, 4, 6]
    assert [r["step"] for r in records if "test_bpd" in r] == [6]
    # load() prefers the EMA weights; the raw weights are there too
    x = data.x[:4]
    loaded = argen.load(run).eval()
    assert torch.allclose(loaded.log_prob(x), trainer.ema.module.log_prob(x))
    raw = argen.load(run, prefer_ema=False)
    assert weights_fingerprint(raw) == weights_fingerprint(trainer.model)
    assert weights_fingerprint(raw) != weights_fingerprint(loaded)


def _rng_loss(model):
    """Make the loss consume the global RNG (as dropout does), so resume must restore it."""
    original = model.loss

    def loss(x, cond=None):
        return original(x, cond) * (1.0 + 0.5 * torch.rand(()))

    model.loss = loss
    return model


class Killed(Exception):
    pass


def _kill_on_call(model, call: int, exc: BaseException | None = None, sigint: bool = False):
    """Stop training at the `call`-th loss evaluation: raise (a hard kill) or send SIGINT."""
    inner, count = model.loss, [0]

    def loss(x, cond=None):
        count[0] += 1
        if count[0] == call:
            if sigint:
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise exc
        return inner(x, cond)

    model.loss = loss
    return model


def _run(tmp_path, name, steps, data_n=24, resume=False, model=None, **kw):
    # 24 examples, batch 8: 3 steps per epoch, so resuming at step 4 or 5 starts mid-epoch
    cfg = quiet(steps=steps, checkpoint_every=2, ema_decay=0.9, schedule="cosine", warmup_steps=2, **kw)
    model = model or _rng_loss(tiny_model(num_classes=3))
    data = TinyData(data_n)
    trainer = Trainer(model, data, cfg, run_dir=tmp_path / name, device="cpu", resume=resume)
    return trainer, data


# Settings the exact-resume test runs under. grad_accum=2 with batch 4 takes the same 8 examples per
# step as batch 8 (3 steps per epoch); its kill lands in the second micro-batch of step 6, after the
# first has drawn from the RNG, so a save on Ctrl-C must store the RNG of the step's start.
RESUME_SETTINGS = {
    "fp32": {},
    "grad_accum=2": dict(batch_size=4, grad_accum=2),
    "bf16": dict(precision="bf16"),
    "fp16": dict(precision="fp16"),
    "bf16+grad_accum=2": dict(batch_size=4, grad_accum=2, precision="bf16"),
}


@pytest.mark.parametrize("setting", sorted(RESUME_SETTINGS))
@pytest.mark.parametrize("how", ["hard-kill", "keyboard-interrupt", "sigint"])
def test_resume_equals_uninterrupted(tmp_path, how, setting):
    kw = RESUME_SETTINGS[setting]
    full, _ = _run(tmp_path, "full", steps=7, **kw)
    full.fit()

    model = _rng_loss(tiny_model(num_classes=3))
    accum = kw.get("grad_accum", 1)
    call = 6 * accum  # the last loss evaluation of step 6
    if how == "hard-kill":  # dies inside step 6: the last checkpoint is step 4
        killed, expect_step = _kill_on_call(model, call, Killed("kill -9")), 4
    elif how == "keyboard-interrupt":  # Ctrl-C inside step 6, before the update: saves step 5
        killed, expect_step = _kill_on_call(model, call, KeyboardInterrupt()), 5
    else:  # SIGINT during step 6: the step finishes, then the trainer saves step 6 and stops
        killed, expect_step = _kill_on_call(model, call, sigint=True), 6
    first, _ = _run(tmp_path, "killed", steps=7, model=killed, **kw)
    with pytest.raises(Killed if how == "hard-kill" else KeyboardInterrupt):
        first.fit()
    assert json.loads((tmp_path / "killed" / "config.json").read_text())["step"] == expect_step

    second, data = _run(tmp_path, "killed", steps=7, resume=True, **kw)
    assert second.step == expect_step
    second.fit()
    assert second.step == 7
    assert weights_fingerprint(second.model) == weights_fingerprint(full.model)
    assert weights_fingerprint(second.ema.module) == weights_fingerprint(full.ema.module)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # records the killed run wrote after its checkpoint were dropped
    assert data.epochs[0] == expect_step // 3  # resumed in the right epoch


def test_resume_refuses_other_model(tmp_path):
    trainer, _ = _run(tmp_path, "run", steps=2)
    trainer.fit()
    other = argen.create_model("pixelcnn", image_shape=(1, 8, 8), levels=4, num_classes=3, hidden=24,
                               n_blocks=1, head=12, first_kernel=3)
    with pytest.raises(ValueError, match="cannot resume"):
        Trainer(other, TinyData(20), quiet(steps=4), run_dir=tmp_path / "run", device="cpu", resume=True)
    with pytest.raises(FileNotFoundError):
        Trainer(tiny_model(3), TinyData(20), quiet(steps=4), run_dir=tmp_path / "none", device="cpu", resume=True)


def test_ema_update_rule():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9, warmup=False)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, 0.9 * start + 0.1 * model.weight)
    assert ema.num_updates == 1
    warm = EMA(model, decay=0.999, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    warm.num_updates = 10_000
    assert warm.current_decay() == pytest.approx(0.999)
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)


def test_trainer_ema_tracks_model():
    trainer = Trainer(tiny_model(), TinyData(), quiet(steps=5, ema_decay=0.5, ema_warmup=False), device="cpu")
    init = weights_fingerprint(trainer.ema.module)
    trainer.fit()
    assert trainer.ema.num_updates == 5
    assert weights_fingerprint(trainer.ema.module) not in (init, weights_fingerprint(trainer.model))
    assert trainer.eval_model is trainer.ema.module and not trainer.ema.module.training
    off = Trainer(tiny_model(), TinyData(), quiet(steps=1, ema_decay=None), device="cpu")
    assert off.ema is None and off.eval_model is off.model


def test_lr_schedules():
    const = TrainConfig(lr=1.0, steps=100, warmup_steps=4, schedule="constant")
    assert [lr_at(s, const) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = TrainConfig(lr=2.0, steps=14, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(4, cos) == pytest.approx(2.0)
    assert lr_at(9, cos) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))  # half way through the decay
    assert lr_at(14, cos) == pytest.approx(0.2) and lr_at(50, cos) == pytest.approx(0.2)
    exp = TrainConfig(lr=1e-3, warmup_steps=0, schedule="exponential", lr_decay=0.9)
    assert lr_at(0, exp) == pytest.approx(1e-3) and lr_at(3, exp) == pytest.approx(1e-3 * 0.9**3)
    with pytest.raises(ValueError):
        lr_factor(-1, exp)
    # the trainer applies the schedule to the optimizer
    trainer = Trainer(tiny_model(), TinyData(), quiet(steps=3, lr=1.0, warmup_steps=2, ema_decay=None), device="cpu")
    seen = []
    step = trainer.train_step
    trainer.train_step = lambda x, y: _record(trainer, step, x, y, seen)
    trainer.fit()
    assert seen == [0.5, 1.0, 1.0]


def _record(trainer, step, x, y, seen):
    out = step(x, y)
    seen.append(trainer.optimizer.param_groups[0]["lr"])
    return out


def test_gradient_clipping():
    trainer = Trainer(tiny_model(), TinyData(), quiet(steps=1, grad_clip=1e-3, ema_decay=None), device="cpu")
    x, y = next(iter(trainer.loader))
    _, norm = trainer.train_step(x, y)
    clipped = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in trainer.model.parameters()))
    assert float(norm) > 1e-3  # the raw norm is reported, the applied one is clipped
    assert clipped == pytest.approx(1e-3, rel=1e-4)
    free = Trainer(tiny_model(), TinyData(), quiet(steps=1, grad_clip=None, ema_decay=None), device="cpu")
    _, none = free.train_step(x, y)
    assert none is None


def test_labels_only_for_conditional_models():
    for classes in (None, 3):
        model, seen = tiny_model(num_classes=classes), []
        inner = model.loss
        model.loss = lambda x, cond=None, seen=seen, inner=inner: (seen.append(cond), inner(x, cond))[1]
        Trainer(model, TinyData(num_classes=3), quiet(steps=2, ema_decay=None), device="cpu").fit()
        if classes is None:
            assert seen == [None, None]
        else:
            assert all(c is not None and c.shape == (8,) and c.dtype == torch.long for c in seen)


def test_set_epoch_called_each_epoch_and_order_is_seeded():
    data = TinyData(16)  # 2 steps per epoch
    trainer = Trainer(tiny_model(), data, quiet(steps=5, ema_decay=None), device="cpu")
    trainer.fit()
    assert data.epochs == [0, 1, 2]
    s = trainer.sampler
    s.set_position(1)
    epoch1 = list(s)
    s.set_position(1, start_batch=1)
    assert list(s) == epoch1[8:]
    s.set_position(2)
    assert sorted(epoch1) == sorted(s) and list(s) != epoch1
    with pytest.raises(ValueError, match="batch"):
        Trainer(tiny_model(), TinyData(4), quiet(steps=1), device="cpu")


def test_nonfinite_loss_stops_training():
    model = tiny_model()
    model.loss = lambda x, cond=None: torch.tensor(float("nan"), requires_grad=True)
    with pytest.raises(FloatingPointError, match="step 1"):
        Trainer(model, TinyData(), quiet(steps=3, log_every=1, ema_decay=None), device="cpu").fit()


def test_train_config_from_data(tmp_path):
    cfg = TrainConfig.from_dict({"lr": "3e-4", "grad_clip": "none", "betas": [0.95, 0.9995], "steps": 10.0,
                                 "tensorboard": "false"})
    assert cfg.lr == 3e-4 and cfg.grad_clip is None and cfg.betas == (0.95, 0.9995) and cfg.steps == 10
    assert cfg.tensorboard is False
    with pytest.raises(ValueError, match="unknown train setting"):
        TrainConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(ValueError, match="train.steps"):
        TrainConfig.from_dict({"steps": "many"})
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig.from_dict({"schedule": "linear"})
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig.from_dict({"ema_decay": 1.5})
    assert parse_overrides(["model.hidden=64", "train.lr=1e-3", "train.optimizer=adam"]) == {
        "model": {"hidden": 64}, "train": {"lr": 1e-3, "optimizer": "adam"}}
    for bad in ["hidden=64", "model.hidden", "optim.lr=1"]:
        with pytest.raises(ValueError, match="--set"):
            parse_overrides([bad])
    from argen.models.image.pixelcnn import PixelCNNConfig

    assert coerce_fields(PixelCNNConfig, {"hidden": "24"}, "model") == {"hidden": 24}
    toml = tmp_path / "c.toml"
    toml.write_text('[model]\nhidden = 24\n[train]\nlr = 0.002\n')
    assert load_config_file(toml) == {"model": {"hidden": 24}, "train": {"lr": 0.002}}
    bad = tmp_path / "c.json"
    bad.write_text('{"model": {"hidden": 24}, "optim": {}}')
    with pytest.raises(ValueError, match="unknown section"):
        load_config_file(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot parse"):
        load_config_file(bad)
    with pytest.raises(FileNotFoundError):
        load_config_file(tmp_path / "missing.json")


def test_adam_and_weight_decay_groups():
    model = tiny_model()
    from argen.train import build_optimizer

    adamw = build_optimizer(model, TrainConfig(weight_decay=0.1))
    decayed = {id(p) for g in adamw.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed and all(p.dim() >= 2 for p in model.parameters() if id(p) in decayed)
    assert isinstance(build_optimizer(model, TrainConfig(optimizer="adam")), torch.optim.Adam)


def test_time_limit_stops_early(tmp_path):
    """A wall-clock budget ends training at a step boundary, checkpointed (benchmarks use it)."""
    import argen
    from argen.registry import tiny_kwargs
    from argen.train import TrainConfig, Trainer

    model = argen.create_model("pixelcnn", image_shape=(1, 8, 8), levels=4, **tiny_kwargs("pixelcnn"))
    data = torch.utils.data.TensorDataset(torch.randint(0, 4, (64, 1, 8, 8)), torch.zeros(64, dtype=torch.long))
    data.shape, data.levels, data.num_classes = (1, 8, 8), 4, None
    cfg = TrainConfig(steps=100_000, batch_size=4, time_limit=0.5, progress=False, tensorboard=False,
                      sample_every=None, warmup_steps=0)
    out = Trainer(model, data, cfg, run_dir=tmp_path / "run").fit()
    assert 0 < out["step"] < 100_000
    assert argen.load(tmp_path / "run").checkpoint_step == out["step"]


def test_train_config_declares_and_checks_every_field():
    """Every TrainConfig field has declared bounds, and out-of-range or mistyped values are refused
    (train.lr=inf used to pass validation and die at step 2)."""
    import dataclasses

    from argen.fields import bad_values, undeclared_fields

    assert undeclared_fields(TrainConfig) == []
    TrainConfig().validate()
    for f in dataclasses.fields(TrainConfig):
        for bad in bad_values(TrainConfig, f.name):
            with pytest.raises(ValueError, match=f"train.{f.name}"):
                TrainConfig(**{f.name: bad}).validate()
    for values in ({"lr": "inf"}, {"lr": float("nan")}, {"grad_clip": "inf"}, {"time_limit": float("inf")},
                   {"betas": [0.9, 1.0]}, {"seed": -1}, {"steps": 0}, {"warmup_steps": -1}):
        with pytest.raises(ValueError, match="train."):
            TrainConfig.from_dict(values)
    with pytest.raises(ValueError, match="train.lr"):
        Trainer(tiny_model(), TinyData(), quiet(steps=2, lr=float("inf")), device="cpu")
    # the copies of coerce / coerce_fields are gone: train.config uses argen.fields' own
    import argen.fields
    import argen.train.config as config

    assert config.coerce is argen.fields.coerce and config.coerce_fields is argen.fields.coerce_fields
