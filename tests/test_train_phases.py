"""The trainer's reconstruction objective (tokenizers): one optimizer per declared phase, phases in
order on each batch, statistics summed and handed back once per step, evaluation through the
module's own `eval_stats` / `summarize`, reconstructions instead of samples, exact resume with
every optimizer's state. A toy two-phase module stands in for a VQ-GAN so that the trainer's side
of the protocol is tested on its own (tests/test_tokenizers.py trains the real ones)."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from argen.checkpoint import weights_fingerprint
from argen.conditioning import CondSpec
from argen.train import TrainConfig, Trainer
from tests.test_train import TinyData


@dataclasses.dataclass
class ToyConfig:
    image_shape: tuple = (1, 4, 4)
    levels: int = 4
    disc_start: int = 2

    def validate(self) -> None:
        pass

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ToyAutoencoder(nn.Module):
    """A linear autoencoder with a linear "discriminator" whose own loss has zero gradient, so any
    change of its weights would come from the generator's adversarial term leaking into it."""

    kind = "tokenizer"
    objective = "reconstruction"
    has_training_stats = True
    optimizer_phases = ("model", "disc")
    model_name = "toy_autoencoder"

    #: the discriminator's own loss: zero gradient by default (the isolation test), a real one to test resume
    disc_scale = 0.0

    def __init__(self, config: ToyConfig | None = None) -> None:
        super().__init__()
        self.config = config or ToyConfig()
        d = 16
        self.net = nn.Linear(d, d)
        self.disc = nn.Linear(d, 1)
        self.register_buffer("seen", torch.zeros(()))
        self.updates: list[dict] = []

    data_shape = property(lambda self: self.config.image_shape)
    levels = property(lambda self: self.config.levels)
    cond_spec = property(lambda self: CondSpec.classes(None))

    def _rec(self, x):
        return self.net(x.float().flatten(1) / 3)

    def training_phases(self, step: int) -> tuple[str, ...]:
        return ("model",) if step < self.config.disc_start else ("model", "disc")

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        return list((self.net if phase == "model" else self.disc).parameters())

    def phase_loss(self, phase, x, step):
        target = x.float().flatten(1) / 3
        n = torch.tensor(float(x.shape[0]))
        if phase == "model":
            rec = self._rec(x)
            mse = (rec - target).pow(2).mean()
            loss = mse + (0.1 * self.disc(rec).mean() if step >= self.config.disc_start else 0.0)
            return loss, {"rec_mse": (mse.detach() * n, n), "count_seen": (n.clone(), n.clone())}
        d_loss = self.disc_scale * self.disc(target).pow(2).mean()  # 0: the D step must leave D unchanged (Adam)
        return d_loss, {"d_loss": (d_loss.detach() * n, n)}

    def update_statistics(self, stats) -> None:
        self.updates.append({k: float(v[0]) for k, v in stats.items()})
        self.seen += stats["count_seen"][0]

    def eval_stats(self, x):
        err = (self._rec(x) - x.float().flatten(1) / 3).pow(2)
        return {"se": (err.sum().detach(), torch.tensor(float(err.numel())))}

    def summarize(self, totals):
        mse = float(totals["se"][0] / totals["se"][1])
        return {"mse": mse, "psnr": 10 * math.log10(1 / max(mse, 1e-12))}

    def reconstruct(self, x):
        return (self._rec(x) * 3).round().clamp(0, 3).long().view_as(x)


def quiet(**kw) -> TrainConfig:
    base = dict(batch_size=8, lr=1e-2, warmup_steps=0, progress=False, tensorboard=False, sample_every=None,
                eval_examples=16, eval_batch_size=8, optimizer="adam", ema_decay=None, grad_clip=None)
    base.update(kw)
    return TrainConfig(**base)


def data() -> TinyData:
    return TinyData(32, shape=(1, 4, 4), num_classes=None)


def test_each_phase_steps_its_own_optimizer_and_the_disc_starts_late():
    torch.manual_seed(0)
    model = ToyAutoencoder()
    trainer = Trainer(model, data(), quiet(steps=4), device="cpu")
    assert set(trainer.optimizers) == {"model", "disc"}
    disc_before = [p.detach().clone() for p in model.disc.parameters()]
    net_before = [p.detach().clone() for p in model.net.parameters()]
    trainer.fit()
    # the generator's adversarial term sent gradients into D; D's own step must not have used them
    assert all(torch.equal(a, b) for a, b in zip(disc_before, model.disc.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(net_before, model.net.parameters()))
    assert [("d_loss" in u) for u in model.updates] == [False, False, True, True]
    assert float(model.seen) == 4 * 8  # statistics summed once per step and handed back
    assert int(trainer.optimizers["disc"].state_dict()["state"][0]["step"]) == 2  # only after disc_start


def test_grad_accum_sums_statistics_over_micro_batches():
    torch.manual_seed(0)
    model = ToyAutoencoder()
    Trainer(model, data(), quiet(steps=2, batch_size=4, grad_accum=2), device="cpu").fit()
    assert [u["count_seen"] for u in model.updates] == [8.0, 8.0]


def test_logs_evaluation_and_picture_of_a_reconstruction_model(tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(ToyAutoencoder(), data(), quiet(steps=4, log_every=2, sample_every=4, num_samples=8),
                      run_dir=tmp_path / "run", eval_data=data(), device="cpu")
    metrics = trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train_loss" in r]
    assert [r["step"] for r in train] == [2, 4] and all("train_bpd" not in r for r in records)
    assert all(r["train_rec_mse"] > 0 for r in train) and "train_d_loss" in train[1] and "train_d_loss" not in train[0]
    test = [r for r in records if "test_psnr" in r]
    assert len(test) == 1 and test[0]["test_mse"] == pytest.approx(10 ** (-test[0]["test_psnr"] / 10))
    assert metrics["test_n"] == 16 and "test_bpd" not in metrics
    assert (tmp_path / "run" / "samples" / "step_0000004.png").is_file()
    desc = json.loads((tmp_path / "run" / "config.json").read_text())
    assert desc["kind"] == "tokenizer" and desc["metrics"]["test_psnr"] == metrics["test_psnr"]


class Learning(ToyAutoencoder):
    disc_scale = 1.0  # the discriminator learns, so a lost optimizer state would show


def test_resume_restores_every_phase_optimizer_exactly(tmp_path):
    torch.manual_seed(0)
    full = Trainer(Learning(), data(), quiet(steps=6), device="cpu")
    full.fit()
    torch.manual_seed(0)
    first = Trainer(Learning(), data(), quiet(steps=3), run_dir=tmp_path / "r", device="cpu")
    first.fit()
    second = Trainer(Learning(), data(), quiet(steps=6), run_dir=tmp_path / "r", device="cpu", resume=True)
    assert second.step == 3
    state = torch.load(tmp_path / "r" / "train_state.pt", weights_only=False)
    assert set(state["optimizers"]) == {"disc"}
    second.fit()
    assert weights_fingerprint(second.model) == weights_fingerprint(full.model)
    ours, theirs = (t.optimizers["disc"].state_dict()["state"][0] for t in (second, full))
    assert int(ours["step"]) == int(theirs["step"]) == 4  # disc phases at steps 2..5
    assert torch.equal(ours["exp_avg"], theirs["exp_avg"]) and torch.equal(ours["exp_avg_sq"], theirs["exp_avg_sq"])
    assert float(ours["exp_avg"].abs().sum()) > 0  # the discriminator did learn


def test_undeclared_phases_are_refused():
    class Bad(ToyAutoencoder):
        optimizer_phases = ("disc", "model")

    with pytest.raises(TypeError, match="start with 'model'"):
        Trainer(Bad(), data(), quiet(steps=1), device="cpu")

    class Unknown(ToyAutoencoder):
        def training_phases(self, step):
            return ("critic",)

    with pytest.raises(TypeError, match="critic"):
        Trainer(Unknown(), data(), quiet(steps=1), device="cpu").fit()
