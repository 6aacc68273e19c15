"""Video metrics: per-frame MSE / PSNR / SSIM, nats per predicted frame, the Moving MNIST video features."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from argen.metrics.video import (
    ASSET_PATH,
    VIDEO_FEATURE_LABEL,
    MovingMnistVideoNet,
    clips_to_network_input,
    frame_metrics,
    frame_mse,
    frame_psnr,
    frame_ssim,
    gaussian_window,
    prediction_nats,
)
from tests.test_video_conformance import ToyVideo, ToyVideoConfig


def _scipy_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al.'s SSIM, independently: scipy's Gaussian filter (sigma 1.5, radius 5 = 11 taps), valid region."""
    from scipy.ndimage import gaussian_filter

    f = lambda z: gaussian_filter(z, sigma=1.5, truncate=3.5, mode="constant")[5:-5, 5:-5]  # noqa: E731
    mu_a, mu_b = f(a), f(b)
    saa, sbb, sab = f(a * a) - mu_a**2, f(b * b) - mu_b**2, f(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    m = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return float(m.mean())


def test_ssim_matches_an_independent_reference():
    pytest.importorskip("scipy")
    g = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 256, (2, 3, 1, 20, 17), generator=g)
    noise = torch.randint(-40, 41, truth.shape, generator=g)
    pred = (truth + noise).clamp(0, 255)
    ours = frame_ssim(pred, truth, 256)
    assert ours.shape == (2, 3)
    for b in range(2):
        for t in range(3):
            ref = _scipy_ssim(pred[b, t, 0].double().numpy() / 255, truth[b, t, 0].double().numpy() / 255)
            assert abs(float(ours[b, t]) - ref) < 1e-10
    assert torch.allclose(frame_ssim(truth, truth, 256), torch.ones(2, 3, dtype=torch.float64))
    assert float(ours.max()) < 0.99


def test_ssim_of_constant_frames_is_the_luminance_term():
    a, b = 2 / 3, 1 / 3  # constant frames: SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    x = torch.full((1, 1, 3, 12, 12), 2, dtype=torch.long)
    y = torch.full((1, 1, 3, 12, 12), 1, dtype=torch.long)
    c1 = 0.01**2
    assert abs(float(frame_ssim(x, y, 4)) - (2 * a * b + c1) / (a * a + b * b + c1)) < 1e-12
    tiny = frame_ssim(x[..., :4, :4], y[..., :4, :4], 4)  # small frames: the window shrinks to fit
    assert abs(float(tiny) - (2 * a * b + c1) / (a * a + b * b + c1)) < 1e-12
    g = gaussian_window()
    assert len(g) == 11 and abs(float(g.sum()) - 1) < 1e-12 and float(g[5] / g[4]) == pytest.approx(math.exp(1 / 4.5))


def test_mse_and_psnr():
    truth = torch.zeros(2, 2, 1, 4, 4, dtype=torch.long)
    pred = truth.clone()
    pred[0, 0, 0, 0, :2] = 3  # two pixels off by the full range: MSE 2/16
    mse = frame_mse(pred, truth, 4)
    assert mse.shape == (2, 2) and float(mse[0, 0]) == pytest.approx(2 / 16) and float(mse[1].sum()) == 0
    psnr = frame_psnr(pred, truth, 4)
    assert float(psnr[0, 0]) == pytest.approx(10 * math.log10(8)) and float(psnr[1, 1]) == pytest.approx(100)
    m = frame_metrics(pred, truth, 4)
    assert set(m) == {"mse", "psnr", "ssim"} and len(m["psnr"]) == 2
    with pytest.raises(ValueError, match="one shape"):
        frame_mse(pred, truth[:, :1], 4)
    with pytest.raises(ValueError, match=r"values in \[0, 3\]"):
        frame_mse(pred + 4, truth, 4)


def test_prediction_nats_sums_the_future_given_the_context():
    torch.manual_seed(0)
    model = ToyVideo(ToyVideoConfig(video_shape=(5, 1, 3, 3), levels=4)).eval()
    x = torch.randint(0, 4, (3, 5, 1, 3, 3), generator=torch.Generator().manual_seed(1))
    res = prediction_nats(model, x, 2, 2)
    with torch.no_grad():
        per = model.log_prob(x, reduce=False)
    expect = -per[:, 2:4].double().sum((1, 2, 3))  # (B,)
    assert res["nats_per_frame"] == pytest.approx(float(expect.mean()) / 2)
    assert res["bits_per_dim"] == pytest.approx(float(expect.mean()) / (2 * 9 * math.log(2)))
    assert len(res["nats_by_frame"]) == 2 and res["exact"] and res["n"] == 3
    later = x.clone()
    later[:, 4] = (x[:, 4] + 1) % 4  # frames after the predicted ones do not count
    assert prediction_nats(model, later, 2, 2)["nats_per_frame"] == pytest.approx(res["nats_per_frame"])
    assert prediction_nats(model, x, 2)["frames"] == 3  # default: every frame after the context
    for k, n in ((0, 2), (4, 2), (2, 0)):
        with pytest.raises(ValueError, match="k \\+ n <= 5"):
            prediction_nats(model, x, k, n)


# ----- the shipped Moving MNIST video features ------------------------------------------------------
def test_shipped_weights_are_small_and_load():
    from argen.metrics.features import load_feature_extractor

    assert ASSET_PATH.is_file() and ASSET_PATH.stat().st_size < 1_000_000
    ext = load_feature_extractor("moving-mnist")
    assert ext.name == "moving_mnist" and ext.label == VIDEO_FEATURE_LABEL
    assert "moving-mnist features, not comparable to I3D FVD" in ext.label
    clips = torch.randint(0, 2, (3, 10, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    out = ext(clips, 2)
    assert out.features.shape == (3, 64) and out.logits is None or out.logits.shape == (3, 18)
    assert torch.isfinite(out.features).all()
    big = clips.repeat_interleave(2, -1).repeat_interleave(2, -2)  # 64x64: area-averaged back to 32x32
    torch.testing.assert_close(ext(big, 2).features, out.features)
    with pytest.raises(ValueError, match="video clips"):
        ext(clips[:, 0], 2)


def test_network_input_and_file_extractor(tmp_path):
    from argen.checkpoint import save_weights
    from argen.metrics.features import load_feature_extractor

    x = torch.tensor([0, 3]).view(1, 2, 1, 1, 1).expand(1, 2, 3, 32, 32)  # two RGB frames, 4 levels
    inp = clips_to_network_input(x, 4)
    assert inp.shape == (1, 1, 2, 32, 32) and float(inp[0, 0, 0].max()) == 0 and float(inp[0, 0, 1].min()) == 1
    assert clips_to_network_input(x[..., :20, :20], 4).shape == (1, 1, 2, 32, 32)
    torch.manual_seed(0)
    net = MovingMnistVideoNet()
    save_weights(net, tmp_path / "v.safetensors")
    ext = load_feature_extractor(str(tmp_path / "v.safetensors"))
    assert ext.name == "moving_mnist" and "not comparable to I3D FVD" in ext.label


def test_video_frechet_distance_separates_real_from_broken_clips(tmp_path):
    from argen.data import load_dataset
    from argen.metrics.features import load_feature_extractor
    from argen.metrics.quality import batches_quality

    ext = load_feature_extractor("moving-mnist")
    ref = load_dataset("moving-mnist-32-10f-binary", "test")
    train = load_dataset("moving-mnist-32-10f-binary", "train")
    real = torch.stack([train[i][0] for i in range(64)])
    shuffled = real[:, torch.randperm(10, generator=torch.Generator().manual_seed(0))]  # same frames, no motion
    noise = torch.randint(0, 2, real.shape, generator=torch.Generator().manual_seed(0))
    kw = dict(features=ext, reference_n=64, batch_size=32, cache_dir=tmp_path, metrics=["fid"])
    good = batches_quality([real[:32], real[32:]], 2, ref, **kw)["fvd_moving_mnist"]
    bad = batches_quality([shuffled], 2, ref, **kw)["fvd_moving_mnist"]
    worst = batches_quality([noise], 2, ref, **kw)["fvd_moving_mnist"]
    assert 0 <= good < bad < worst, (good, bad, worst)
