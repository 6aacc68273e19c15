"""The `argen` CLI end to end on a tiny run, plus the exit codes of bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import argen
from argen.checkpoint import weights_fingerprint
from argen.cli import COMMANDS, hidden_mask, main
from argen.data.images import read_image

TINY = ["--set", "model.hidden=12", "model.n_blocks=1", "model.head=12", "model.first_kernel=3",
        "train.eval_examples=40", "train.eval_batch_size=40", "train.sample_every=null", "train.progress=false",
        "train.tensorboard=false", "train.warmup_steps=0", "train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "pixelcnn", "--data", "mnist-2bit", "--steps", "4", "--batch-size", "8", "--lr", "3e-3",
                 "--out", str(out), "--device", "cpu", "--class-conditional", *TINY]) == 0
    return out


def test_train_writes_a_run(run, capsys):
    desc = json.loads((run / "config.json").read_text())
    assert desc["model"] == "pixelcnn" and desc["step"] == 4 and desc["data"] == "mnist-2bit"
    assert desc["config"]["hidden"] == 12 and desc["config"]["num_classes"] == 10 and desc["config"]["levels"] == 4
    assert desc["config"]["image_shape"] == [1, 28, 28]
    assert desc["train"]["lr"] == 3e-3 and desc["train"]["batch_size"] == 8 and desc["train"]["sample_every"] is None
    assert desc["metrics"]["test_n"] == 40
    model = argen.load(run)
    assert model.config.num_classes == 10


def _in_process_eval(run: Path, n: int, batch_size: int) -> tuple[object, object, dict]:
    """(model, full test split, evaluate_bpd result) of `argen eval RUN --max-examples n --batch-size b`, in process."""
    from torch.utils.data import DataLoader, Subset

    from argen.data import load_dataset
    from argen.metrics.bpd import evaluate_bpd

    desc = json.loads((run / "config.json").read_text())
    model = argen.load(run, device="cpu")
    full = load_dataset(desc["data"], "test", seed=desc["train"]["seed"])
    result = evaluate_bpd(model, DataLoader(Subset(full, range(n)), batch_size=batch_size), device="cpu")
    return model, full, result


def test_eval(run, capsys):
    assert main(["eval", str(run), "--max-examples", "20", "--batch-size", "10", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    record = json.loads((run / "eval.json").read_text())
    assert record["n"] == 20 and record["split"] == "test" and record["exact"] is True and record["data"] == "mnist-2bit"
    assert "exact likelihood" in out
    # the same figure as the Python API on the same weights and examples, to the printed precision and beyond
    _, _, expect = _in_process_eval(run, 20, 10)
    assert f"mnist-2bit test: {expect['bpd']:.4f} bits/dim, {expect['nats']:.2f} nats/example over 20 examples" in out
    assert record["bpd"] == pytest.approx(expect["bpd"], rel=1e-9) and record["nats"] == pytest.approx(expect["nats"], rel=1e-9)


def test_sample_and_naive_agree(run, tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["sample", str(run), "-n", "3", "-o", str(a), "--seed", "1", "--class", "7", "--device", "cpu"]) == 0
    assert main(["sample", str(run), "-n", "3", "-o", str(b), "--seed", "1", "--class", "7", "--naive",
                 "--device", "cpu"]) == 0
    img = read_image(a)
    assert img.shape[:2] == (2 + 2 * 30, 2 + 2 * 30)  # 3 images on a 2x2 grid
    assert np.array_equal(img, read_image(b))  # the model's sampler and the naive one draw the same
    assert main(["sample", str(run), "-n", "2", "-o", str(b), "--class", "10"]) == 2
    assert "--class must be in [0, 9]" in capsys.readouterr().err


def test_complete(run, tmp_path, capsys):
    out = tmp_path / "c.png"
    assert main(["complete", str(run), "--mask", "bottom-half", "-n", "2", "-o", str(out), "--device", "cpu"]) == 0
    grid = read_image(out)
    rows = grid if grid.ndim == 2 else grid[..., 0]
    assert rows.shape == (2 + 3 * 30, 2 + 2 * 30)
    original, masked, completed = (rows[2 + 30 * r: 30 * (r + 1), 2:30] for r in range(3))
    assert np.array_equal(original[:14], completed[:14])  # the known top half is kept
    assert np.array_equal(original[:14], masked[:14])
    assert (masked[14:] == masked[14, 0]).all()  # the hidden half is shown flat


def test_hidden_masks():
    assert hidden_mask("top-half", 2, (4, 6))[0, :, 0].tolist() == [True, True, False, False]
    assert hidden_mask("right-half", 1, (4, 6))[0, 0].tolist() == [False] * 3 + [True] * 3
    center = hidden_mask("center", 1, (8, 8))[0]
    assert center.sum() == 16 and center[4, 4] and not center[0, 0]
    r = hidden_mask("random", 3, (8, 8), seed=0)
    assert r.shape == (3, 8, 8) and 0 < r.float().mean() < 1 and torch.equal(r, hidden_mask("random", 3, (8, 8), seed=0))
    with pytest.raises(ValueError, match="--mask"):
        hidden_mask("diagonal", 1, (4, 4))


def test_models_and_datasets(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("pixelcnn "))
    assert "exact" in line and "masked convolutions" in line
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert any(row.startswith("mnist ") and "1x28x28" in row and "yes" in row for row in out.splitlines())


def test_console_script():
    exe = Path(sys.executable).with_name("argen")
    if not exe.exists():
        pytest.skip(f"console script not installed at {exe}")
    done = subprocess.run([str(exe), "models"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "pixelcnn" in done.stdout and "likelihood" in done.stdout


def test_bad_inputs_exit_codes(run, tmp_path, capsys):
    assert main(["train", "nosuchmodel", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("argen: error: unknown model 'nosuchmodel'") and "pixelcnn" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1

    assert main(["eval", str(tmp_path / "missing")]) == 3
    assert "no run directory" in capsys.readouterr().err

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{ not json")
    assert main(["eval", str(corrupt)]) == 3
    assert main(["sample", str(corrupt), "-o", str(tmp_path / "s.png")]) == 3
    assert "corrupt checkpoint" in capsys.readouterr().err

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((run / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"garbage")
    assert main(["eval", str(broken)]) == 3

    for bad in (["--set", "hidden=3"], ["--set", "model.nosuch=3"], ["--set", "train.lr=fast"],
                ["--set", "model.hidden=abc"], ["--steps", "0"]):
        assert main(["train", "pixelcnn", "--out", str(tmp_path / "y"), *bad]) == 2, bad
        # parse-time errors (e.g. --steps 0) come after argparse's usage lines; the error is the last line
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith("argen: error: "), bad
    assert not (tmp_path / "y").exists()

    assert main(["train", "pixelcnn", "--out", str(run), "--steps", "4"]) == 2  # would clobber a run
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train", "pixelcnn", "--device", "tpu", "--out", str(tmp_path / "z"), "--data", "mnist-1bit",
                 "--steps", "1", *TINY]) == 2
    assert main(["nosuchcommand"]) == 2
    assert main(["complete", str(run), "--mask", "diagonal"]) == 2


def test_unexpected_error_and_debug(run, monkeypatch, capsys):
    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("argen.metrics.bpd.evaluate_bpd", boom)
    assert main(["eval", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "argen: error: unexpected RuntimeError: disk on fire (run with --debug for the traceback)"
    assert main(["--debug", "eval", str(run)]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_config_file_interrupt_and_resume(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": {"hidden": 12, "n_blocks": 1, "head": 12, "first_kernel": 3},
                               "train": {"eval_examples": 10, "sample_every": None, "progress": False,
                                         "tensorboard": False, "checkpoint_every": 100, "batch_size": 4}}))
    out = tmp_path / "run"
    args = ["train", "pixelcnn", "--data", "mnist-1bit", "--out", str(out), "--config", str(cfg), "--device", "cpu"]

    from argen.train.trainer import Trainer

    step = Trainer.train_step

    def interrupt_at_3(self, x, y):
        if self.step == 2:
            raise KeyboardInterrupt
        return step(self, x, y)

    monkeypatch.setattr(Trainer, "train_step", interrupt_at_3)
    assert main([*args, "--steps", "5"]) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 2" in err and "--resume" in err
    assert json.loads((out / "config.json").read_text())["step"] == 2
    monkeypatch.setattr(Trainer, "train_step", step)

    assert main([*args, "--steps", "5", "--resume", "--set", "model.hidden=24"]) == 2  # model is fixed
    assert main([*args, "--steps", "5", "--resume"]) == 0
    desc = json.loads((out / "config.json").read_text())
    assert desc["step"] == 5 and desc["train"]["batch_size"] == 4 and desc["config"]["hidden"] == 12
    resumed = argen.load(out, prefer_ema=False)

    fresh = tmp_path / "fresh"
    assert main(["train", "pixelcnn", "--data", "mnist-1bit", "--out", str(fresh), "--config", str(cfg),
                 "--device", "cpu", "--steps", "5"]) == 0
    assert weights_fingerprint(argen.load(fresh, prefer_ema=False)) == weights_fingerprint(resumed)
    assert main([*args, "--steps", "5", "--overwrite"]) == 0  # starts over in place
    assert json.loads((out / "config.json").read_text())["step"] == 5


def test_commands_are_pluggable():
    assert all(callable(c) for c in COMMANDS)
    from argen.cli import COMMAND_MODULES, build_parser

    assert isinstance(COMMAND_MODULES, list)
    names = set(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001
    assert {"train", "eval", "sample", "complete", "models", "datasets"} <= names


def test_eval_with_sample_metrics(run, tmp_path, capsys):
    """`argen eval --sample-metrics` samples the model and adds MNIST-feature FID to eval.json."""
    assert main(["eval", str(run), "--max-examples", "20", "--batch-size", "10", "--device", "cpu",
                 "--sample-metrics", "fid,conf", "--sample-n", "6", "--sample-features", "mnist",
                 "--stats-cache", str(tmp_path / "cli-cache")]) == 0
    out = capsys.readouterr().out
    record = json.loads((run / "eval.json").read_text())
    metrics = record["sample_metrics"]
    assert "NOT comparable" in metrics["features"]
    # the same FID in process: same weights, sampling seed (0), batch size, feature network and reference
    # split; reference statistics recomputed in a fresh cache
    from argen.metrics.features import load_feature_extractor
    from argen.metrics.quality import sample_quality

    model, full, _ = _in_process_eval(run, 20, 10)
    expect = sample_quality(model, full, metrics=["fid", "conf"], n=6, features=load_feature_extractor("mnist", "cpu"),
                            split="test", batch_size=10, seed=0, cache_dir=tmp_path / "api-cache", progress=False)
    assert metrics["n"] == 6 and metrics["reference_n"] == expect["reference_n"] == len(full)
    assert f'fid_mnist: {expect["fid_mnist"]:.4g}' in out
    assert f'confidence_mnist (mean top-class probability): {expect["confidence_mnist"]:.3f}' in out
    assert metrics["fid_mnist"] == pytest.approx(expect["fid_mnist"], rel=1e-9)
    assert metrics["confidence_mnist"] == pytest.approx(expect["confidence_mnist"], rel=1e-9)


def test_eval_lmconv_order_ensemble(tmp_path, capsys):
    """`argen eval --orders N` averages LMConv's likelihood over N orders and names them."""
    from argen.registry import tiny_kwargs

    model = argen.create_model("lmconv", image_shape=(1, 28, 28), levels=4, **tiny_kwargs("lmconv"))
    argen.save(model, tmp_path / "run", data="mnist-2bit")
    assert main(["eval", str(tmp_path / "run"), "--orders", "2", "--max-examples", "4", "--batch-size", "4",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert record["orders"] == ["s_curve:0", "s_curve:1"] and "averaging the likelihood over 2 orders" in out
    assert main(["eval", str(tmp_path / "run"), "--orders", "2", "--max-examples", "4"]) == 0
    capsys.readouterr()
    argen.save(argen.create_model("pixelcnn", image_shape=(1, 28, 28), levels=4, **tiny_kwargs("pixelcnn")),
               tmp_path / "pc", data="mnist-2bit")
    assert main(["eval", str(tmp_path / "pc"), "--orders", "2", "--max-examples", "4"]) == 2
