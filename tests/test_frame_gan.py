"""frame_gan (Huang et al. 2022): prediction shapes and kept context, complementary masks, the
scheduled-sampling schedule, phases (plain loop and the trainer), save/load, bad inputs."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import Dataset

import argen
from argen.registry import get_entry, tiny_kwargs
from argen.train import TrainConfig, Trainer

TINY = tiny_kwargs("frame_gan")


def make(**kw):
    torch.manual_seed(0)
    return argen.create_model("frame_gan", **{**TINY, "levels": 4, **kw})


class MovingSquares(Dataset):
    """(T, 1, 16, 16) clips of a 4x4 square moving one pixel per frame, 4 levels."""

    def __init__(self, n: int = 8, frames: int = 4, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.zeros(n, frames, 1, 16, 16, dtype=torch.long)
        for i in range(n):
            r, c = (int(v) for v in torch.randint(0, 8, (2,), generator=g))
            for t in range(frames):
                self.x[i, t, 0, r:r + 4, c + t:c + t + 4] = 3
        self.name, self.shape, self.levels, self.num_classes = "squares", (frames, 1, 16, 16), 4, None

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], -1


def test_registry_entry_declares_no_likelihood():
    entry = get_entry("frame_gan")
    assert entry.modality == "video"
    cls = entry.cls
    assert cls.exact_likelihood is False and cls.objective == "reconstruction" and cls.kind == "model"
    assert not hasattr(cls, "log_prob") and cls.optimizer_phases == ("model", "disc")
    m = make()
    assert m.model_name == "frame_gan" and m.data_shape == (4, 1, 16, 16) and m.levels == 4
    assert m.num_dims == 4 * 256 and not m.cond_spec.conditional and m.device.type == "cpu"
    assert m.capabilities.stepper_kind == "naive" and m.config.shape_field == "video_shape"


@pytest.mark.parametrize("k", [1, 2, 3])
def test_predict_shapes_ranges_and_keeps_the_context(k):
    m = make()
    x = MovingSquares().x[:3]
    out = m.predict(x[:, :k])
    assert out.shape == (3, 4, 1, 16, 16) and out.dtype == torch.long
    assert int(out.min()) >= 0 and int(out.max()) < 4
    assert torch.equal(out[:, :k], x[:, :k])
    assert torch.equal(out, m.predict(x[:, :k]))  # deterministic
    # each frame comes from the one before it: the predicted part differs with a different last context frame
    y = x[:, :k].clone()
    y[:, -1] = (y[:, -1] + 1) % 4
    assert not torch.equal(m.predict(y)[:, k:], out[:, k:])
    assert m.training  # predict restores the training flag


def test_complementary_masks_sum_to_one_and_compose_the_frame():
    m = make()
    frame = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        out = m.step(frame, 1)
    assert out.static_mask.shape == out.variable_mask.shape == (2, 1, 16, 16)
    torch.testing.assert_close(out.static_mask + out.variable_mask, torch.ones(2, 1, 16, 16))
    assert float(out.static_mask.min()) >= 0 and float(out.static_mask.max()) <= 1
    torch.testing.assert_close(out.frame, out.static_mask * frame + out.variable_mask * out.difference)
    assert float(out.difference.abs().max()) <= 1


def test_scheduled_sampling_follows_the_schedule_and_its_seed():
    m = make(ss_start=10, ss_ramp=20, ss_max=0.8, video_shape=(12, 1, 16, 16))
    probs = [m.scheduled_sampling_probability(s) for s in (0, 9, 10, 19, 29, 30, 1000)]
    assert probs == pytest.approx([0.0, 0.0, 0.8 / 20, 0.8 * 10 / 20, 0.8, 0.8, 0.8])
    assert make(ss_ramp=0, ss_max=0.5).scheduled_sampling_probability(0) == 0.5
    torch.manual_seed(3)
    a = m.own_frame_choices(25, 4000)
    torch.manual_seed(3)
    b = m.own_frame_choices(25, 4000)
    assert a.shape == (4000, 10) and a.dtype == torch.bool and torch.equal(a, b)
    assert abs(float(a.float().mean()) - m.scheduled_sampling_probability(25)) < 0.01
    assert not bool(m.own_frame_choices(5, 100).any())
    # the model phase draws its choices from torch's RNG: same seed, same loss
    x = MovingSquares(frames=12).x[:2]
    torch.manual_seed(4)
    la = m.phase_loss("model", x, 25)[0]
    torch.manual_seed(4)
    lb = m.phase_loss("model", x, 25)[0]
    assert float(la.detach()) == float(lb.detach())
    torch.manual_seed(5)
    assert float(m.phase_loss("model", x, 25)[0].detach()) != float(la.detach())  # the choices matter


def test_rollout_feeds_own_frames_where_chosen():
    m = make()
    xf = torch.rand(2, 4, 1, 16, 16) * 2 - 1
    truth, _ = m.rollout(xf, torch.zeros(2, 2, dtype=torch.bool))
    teacher, _ = m.rollout(xf)
    torch.testing.assert_close(truth, teacher)
    own, _ = m.rollout(xf, torch.ones(2, 2, dtype=torch.bool))
    torch.testing.assert_close(own[:, 0], truth[:, 0])  # the first step always starts from the real frame
    with torch.no_grad():  # all-own = free running from frame 0
        frame, free = xf[:, 0], []
        for t in range(3):
            frame = m.step(frame, t).frame
            free.append(frame)
    torch.testing.assert_close(own, torch.stack(free, 1))
    assert not torch.allclose(own[:, 2], truth[:, 2])


def test_phases_in_a_plain_loop_start_the_discriminators_late():
    m = make(disc_start=3)
    assert m.training_phases(0) == ("model",) and m.training_phases(3) == ("model", "disc")
    gen_params, disc_params = m.phase_parameters("model"), m.phase_parameters("disc")
    assert {id(p) for p in gen_params}.isdisjoint(id(p) for p in disc_params)
    assert len(gen_params) + len(disc_params) == len(list(m.parameters()))
    opts = {ph: torch.optim.Adam(m.phase_parameters(ph), lr=1e-3) for ph in m.optimizer_phases}
    x = MovingSquares().x
    disc_before = [p.detach().clone() for p in disc_params]
    seen = []
    for step in range(5):
        for phase in m.training_phases(step):
            opts[phase].zero_grad()
            loss, stats = m.phase_loss(phase, x, step)
            loss.backward()
            opts[phase].step()
            seen.append((step, phase, sorted(stats)))
            if phase == "model":
                assert (float(stats["g_loss"][0]) != 0) == (step >= 3)
        if step < 3:  # no disc phase yet: the discriminators are untouched
            assert all(torch.equal(a, b) for a, b in zip(disc_before, disc_params))
    assert [s[:2] for s in seen] == [(0, "model"), (1, "model"), (2, "model"), (3, "model"), (3, "disc"),
                                     (4, "model"), (4, "disc")]
    assert seen[4][2] == ["d_loss", "logits_fake", "logits_real"]
    assert not all(torch.equal(a, b) for a, b in zip(disc_before, disc_params))
    with pytest.raises(ValueError, match="phase"):
        m.phase_loss("critic", x, 0)


def test_reconstruction_training_lowers_the_loss():
    m = make(disc_start=1000)
    x = MovingSquares().x
    opt = torch.optim.Adam(m.phase_parameters("model"), lr=3e-3)
    first = float(m.phase_loss("model", x, 0)[0])
    for _ in range(40):
        opt.zero_grad()
        m.phase_loss("model", x, 0)[0].backward()
        opt.step()
    assert float(m.phase_loss("model", x, 0)[0]) < 0.7 * first


def test_trainer_runs_both_phases_and_reports_prediction_metrics(tmp_path):
    m = make(disc_start=2)
    config = TrainConfig(steps=4, batch_size=4, log_every=2, progress=False, tensorboard=False, warmup_steps=0,
                         ema_decay=None, eval_examples=None)
    trainer = Trainer(m, MovingSquares(), config, run_dir=tmp_path / "run", eval_data=MovingSquares(4, seed=1),
                      device="cpu")
    metrics = trainer.fit()
    for key in ("test_mse", "test_psnr", "test_ssim", "test_psnr_1", "test_ssim_3"):
        assert key in metrics, key
    assert 0 <= metrics["test_mse"] <= 1 and -1 <= metrics["test_ssim"] <= 1
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train_loss" in r]
    assert "train_d_loss" not in train[0] and "train_d_loss" in train[1]
    back = argen.load(tmp_path / "run", prefer_ema=False)
    x = MovingSquares(2, seed=2).x
    assert torch.equal(back.predict(x[:, :1]), m.predict(x[:, :1]))


def test_eval_stats_are_sums_that_summarize_to_per_frame_metrics():
    m = make(context_frames=2)
    x = MovingSquares(4).x
    stats = m.eval_stats(x)
    assert stats["sq_err"][0].shape == (2,) and float(stats["psnr"][1][0]) == 4
    both = {k: (a + b, c + d) for (k, (a, c)), (b, d) in zip(stats.items(), m.eval_stats(x).values())}
    s1, s2 = m.summarize(stats), m.summarize(both)
    assert s1 == pytest.approx(s2) and set(s1) >= {"mse", "psnr", "ssim", "mse_2", "mse_3", "ssim_3"}
    pred = m.predict(x[:, :2])
    want = ((pred[:, 2:] - x[:, 2:]).double() / 3).pow(2).mean()
    assert s1["mse"] == pytest.approx(float(want))
    # the numbers are the shared video metrics' (argen.metrics.video) of the prediction
    from argen.metrics.video import frame_psnr, frame_ssim

    assert s1["ssim_3"] == pytest.approx(float(frame_ssim(pred[:, 3:], x[:, 3:], 4).mean()))
    assert s1["psnr"] == pytest.approx(float(frame_psnr(pred[:, 2:], x[:, 2:], 4).mean()))
    perfect = m.summarize({"ssim": (torch.ones(2) * 4, torch.full((2,), 4.0))})
    assert perfect["ssim"] == 1.0 and "mse" not in perfect
    empty = m.eval_stats(x[:0])  # an empty shard (the trainer's other ranks) adds zero counts
    assert all(float(c.sum()) == 0 for _, c in empty.values()) and set(empty) == set(stats)


def test_save_load_gives_identical_predictions(tmp_path):
    m = make()
    argen.save(m, tmp_path / "run")
    back = argen.load(tmp_path / "run")
    assert type(back) is type(m) and back.config == m.config
    x = MovingSquares(3).x
    assert torch.equal(back.predict(x[:, :1]), m.predict(x[:, :1]))


def test_bad_inputs_raise_value_errors():
    m = make()
    x = MovingSquares(2).x
    with pytest.raises(ValueError, match="predict"):
        m.sample(2)
    with pytest.raises(ValueError, match=r"expected context frames \(B, k, 1, 16, 16\) with 1 <= k < 4, given"):
        m.predict(x)
    with pytest.raises(ValueError, match="context frames"):
        m.predict(x[:, :1, :, :8])
    with pytest.raises(ValueError, match="torch.long"):
        m.predict(x[:, :1].float())
    with pytest.raises(ValueError, match=r"values in \[0, 3\]"):
        m.predict(x[:, :1] + 4)
    with pytest.raises(ValueError, match="config=None"):
        m.predict(x[:, :1], config=object())
    with pytest.raises(ValueError, match=r"expected shape \(B, 4, 1, 16, 16\)"):
        m.phase_loss("model", x[:, :3], 0)
    with pytest.raises(ValueError, match="model.context_frames"):
        make(context_frames=4)
    with pytest.raises(ValueError, match="at least 2 frames"):
        make(video_shape=(1, 1, 16, 16), context_frames=1)
    with pytest.raises(ValueError, match="model.disc_layers"):
        make(disc_layers=4)
    with pytest.raises(ValueError, match="model.recon_loss"):
        make(recon_loss="l3")
    with pytest.raises(ValueError, match="model.ss_max"):
        make(ss_max=1.5)
    with pytest.raises(ValueError, match="image_shape"):
        make(image_shape=(1, 16, 16))
    with pytest.raises(ValueError, match="at most 256"):
        make(levels=1024)
