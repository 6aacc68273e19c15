"""The CLI with video models: sample / complete write GIF + PNG strip, `argen predict`, `argen fvd --features moving-mnist`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import argen
from argen.cli import main
from argen.data.images import read_image
from argen.data.video_io import read_video
from argen.metrics.video import prediction_nats
from argen.registry import _REGISTRY, register_model, tiny_kwargs
from tests.test_video_conformance import TOY, ToyVideo

LEVELS, SHAPE = 4, (4, 1, 4, 4)  # (T, C, H, W)


@pytest.fixture
def video_run(tmp_path):
    """A ToyVideo run (registered under a test-only name) over a small .npz of clips with 4 levels."""
    if TOY not in _REGISTRY:
        register_model(TOY, tiny={}, modality="video", description="test-only toy video model")(ToyVideo)
    rng = np.random.default_rng(0)
    clips = rng.integers(0, LEVELS, (20, *SHAPE)).astype(np.uint8)
    np.savez(tmp_path / "clips.npz", images=clips, levels=np.int64(LEVELS))
    torch.manual_seed(0)
    model = argen.create_model(TOY, video_shape=SHAPE, levels=LEVELS)
    run = tmp_path / "run"
    argen.save(model, run, data=f"npy:{tmp_path / 'clips.npz'}")
    yield run, clips
    _REGISTRY.pop(TOY, None)


def _scaled(v: np.ndarray) -> np.ndarray:
    return np.rint(v * (255 / (LEVELS - 1))).astype(np.uint8)


def test_sample_writes_a_gif_and_a_strip(video_run, tmp_path, monkeypatch, capsys):
    run, _ = video_run
    a, b = tmp_path / "a.gif", tmp_path / "b.gif"
    assert main(["sample", str(run), "-n", "3", "-o", str(a), "--seed", "1", "--device", "cpu"]) == 0
    assert main(["sample", str(run), "-n", "3", "-o", str(b), "--seed", "1", "--naive", "--device", "cpu"]) == 0
    frames = read_video(a)
    assert frames.shape == (4, 2 + 4 + 2, 2 + 3 * 6, 3)  # T frames, 3 clips side by side
    assert np.array_equal(frames, read_video(b))  # own sampler == naive
    strip = read_image(tmp_path / "a.png")
    assert strip.shape == (2 + 3 * 6, 2 + 4 * 6)  # rows = clips, columns = frames
    assert np.array_equal(strip[2:6, 2:6], frames[0, 2:6, 2:6, 0]) and np.array_equal(strip[8:12, 20:24], frames[3, 2:6, 8:12, 0])
    assert "a.png" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    assert main(["sample", str(run), "-n", "1", "--device", "cpu"]) == 0  # default name for video
    assert (tmp_path / "samples.gif").is_file() and (tmp_path / "samples.png").is_file()
    assert main(["sample", str(run), "-n", "1", "-o", str(tmp_path / "s.png"), "--device", "cpu"]) == 2
    assert "expected a video file ending in .gif, .mp4" in capsys.readouterr().err


def test_complete_with_video_masks(video_run, tmp_path, capsys):
    run, clips = video_run
    out = tmp_path / "c.gif"
    assert main(["complete", str(run), "--mask", "future", "-n", "2", "-o", str(out), "--device", "cpu"]) == 0
    frames = read_video(out)[..., 0]  # (T, rows: clips, cols: original | masked | completed)
    assert frames.shape == (4, 2 + 2 * 6, 2 + 3 * 6)
    test = clips[9::10]  # the positional split's test items of the .npz
    for i in range(2):
        top = 2 + 6 * i
        original, masked, completed = (frames[:, top:top + 4, 2 + 6 * j: 6 + 6 * j] for j in range(3))
        assert np.array_equal(original, _scaled(test[i][:, 0]))
        assert np.array_equal(completed[:2], original[:2])  # the first half of the frames is known
        assert (masked[2:] == _scaled(np.array((LEVELS - 1) // 2))).all()  # hidden frames show mid grey
    assert (tmp_path / "c.png").is_file()
    assert main(["complete", str(run), "--mask", "top-half", "-n", "1", "-o", str(out), "--device", "cpu"]) == 0
    frames = read_video(out)[..., 0]
    assert np.array_equal(frames[:, 4:6, 14:18], _scaled(test[0][:, 0, 2:]))  # every frame's bottom half is kept
    assert np.array_equal(frames[:, 2:4, 8:12], np.full((4, 2, 4), 85, np.uint8))  # its top half hidden in every frame


def test_future_mask_needs_a_video_model(tmp_path, capsys):
    model = argen.create_model("pixelcnn", image_shape=(1, 4, 4), levels=4, **tiny_kwargs("pixelcnn"))
    argen.save(model, tmp_path / "img", data="mnist-2bit")
    assert main(["complete", str(tmp_path / "img"), "--mask", "future", "-o", str(tmp_path / "c.png")]) == 2
    assert "--mask future" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "img"), "--context", "1", "--frames", "1", "-o", str(tmp_path / "p.gif")]) == 2
    assert "predict needs a video model" in capsys.readouterr().err


def test_predict_reports_frame_metrics_and_nats(video_run, tmp_path, capsys):
    run, clips = video_run
    out, js = tmp_path / "p.gif", tmp_path / "p.json"
    assert main(["predict", str(run), "--context", "2", "--frames", "2", "-n", "2", "-o", str(out), "--json", str(js),
                 "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "PSNR" in text and "SSIM" in text and "nats/frame" in text
    record = json.loads(js.read_text())
    assert record["context"] == 2 and record["frames"] == 2 and record["n"] == 2
    assert len(record["psnr"]) == len(record["ssim"]) == len(record["mse"]) == 2
    model = argen.load(run).eval()
    truth = torch.from_numpy(clips[9::10][:2].astype(np.int64))
    expect = prediction_nats(model, truth, 2, 2)
    assert record["likelihood"]["nats_per_frame"] == pytest.approx(expect["nats_per_frame"])
    frames = read_video(out)[..., 0]  # each row one clip: truth | prediction
    assert frames.shape == (4, 2 + 2 * 6, 2 + 2 * 6)
    truth0, pred0 = frames[:, 2:6, 2:6], frames[:, 2:6, 8:12]
    assert np.array_equal(truth0, _scaled(truth[0, :, 0].numpy())) and np.array_equal(pred0[:2], truth0[:2])
    strip = read_image(tmp_path / "p.png")
    assert strip.shape == (2 + 4 * 6, 2 + 4 * 6)  # rows truth, prediction, truth, prediction; K + N frames
    mse = ((pred0[2:].astype(np.float64) - truth0[2:]) / 255) ** 2
    first = ((frames[:, 8:12, 8:12][2:].astype(np.float64) - frames[:, 8:12, 2:6][2:]) / 255) ** 2
    assert record["mse"][0] == pytest.approx((mse[0].mean() + first[0].mean()) / 2)
    assert main(["predict", str(run), "--context", "3", "--frames", "2", "-o", str(out), "--device", "cpu"]) == 2
    assert "--context + --frames <= 4" in capsys.readouterr().err
    assert main(["predict", str(run), "--context", "1", "--frames", "1", "-o", str(tmp_path / "p.png")]) == 2
    assert "expected a video file" in capsys.readouterr().err


def test_fvd_with_the_moving_mnist_features(tmp_path, capsys):
    from argen.data import load_dataset

    ds = load_dataset("moving-mnist-32-10f-binary", "train")
    np.save(tmp_path / "clips.npy", np.stack([ds[i][0].numpy() for i in range(8)]).astype(np.uint8))
    base = ["fvd", str(tmp_path / "clips.npy"), "--data", "moving-mnist-32-10f-binary", "--reference-n", "16",
            "--levels", "2", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--no-progress"]
    assert main([*base, "--features", "moving-mnist", "--json", str(tmp_path / "f.json")]) == 0
    out = capsys.readouterr().out
    assert "fvd_moving_mnist = " in out and "not comparable to I3D FVD" in out
    assert json.loads((tmp_path / "f.json").read_text())["fvd_moving_mnist"] > 0
    assert main(base) == 2  # --features i3d (the default) still needs --i3d
    assert "expected --i3d FILE" in capsys.readouterr().err
