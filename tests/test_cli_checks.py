"""The CLI checks its input before any long work: bounded numeric options at parse time, output
paths and feature networks before sampling or evaluating, and no NaN figure is ever reported."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import argen
from argen.cli import build_parser, main
from argen.data.images import read_image
from argen.registry import tiny_kwargs


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """An untrained tiny PixelCNN on mnist-2bit (4 levels), saved as a run directory."""
    out = tmp_path_factory.mktemp("checks") / "run"
    torch.manual_seed(0)
    model = argen.create_model("pixelcnn", image_shape=(1, 28, 28), levels=4, **tiny_kwargs("pixelcnn"))
    argen.save(model, out, data="mnist-2bit")
    return out


def _no_long_work(monkeypatch) -> None:
    """Make sampling, evaluating and reference statistics fail loudly: a check must come first."""
    def forbidden(*a, **k):
        raise AssertionError("long work started before the input was checked")

    monkeypatch.setattr("argen.cli._generate", forbidden)
    monkeypatch.setattr("argen.metrics.bpd.evaluate_bpd", forbidden)
    monkeypatch.setattr("argen.metrics.quality.reference_statistics", forbidden)
    monkeypatch.setattr("argen.metrics.quality.sample_batches", forbidden)


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("argen: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ----- 1. numeric options are bounded at parse time ------------------------------------------------
SAMPLING_BAD = [("--temperature", "nan"), ("--temperature", "inf"), ("--temperature", "-inf"), ("--temperature", "0"),
                ("--temperature", "-1"), ("--top-p", "2"), ("--top-p", "0"), ("--top-p", "nan"), ("--top-p", "1.0001"),
                ("--top-k", "0"), ("--top-k", "2.5"), ("--steps", "0"), ("--seed", "-1"), ("--seed", str(2**64)),
                ("--seed", "1.5"), ("--cfg-scale", "-1"), ("--cfg-scale", "nan")]
BAD = (
    [("sample", opt, v) for opt, v in SAMPLING_BAD + [("--nrow", "0"), ("--nrow", "-1"), ("-n", "0"), ("-n", "-3"),
                                                      ("--class", "-1")]]
    + [("complete", opt, v) for opt, v in SAMPLING_BAD + [("-n", "0")]]
    + [("eval", opt, v) for opt, v in [("--batch-size", "0"), ("--max-examples", "0"), ("--orders", "0"),
                                       ("--sample-n", "0"), ("--batch-size", "nan")]]
    + [(cmd, opt, v) for cmd in ("fid", "fvd") for opt, v in
       [("--n", "0"), ("--n", "-1"), ("--reference-n", "0"), ("--batch-size", "0"), ("--seed", "-1"),
        ("--temperature", "nan"), ("--temperature", "0"), ("--levels", "1"), ("--levels", "257")]]
    + [("fvd", "--frames", "8"), ("fvd", "--frames", "0")]
)


@pytest.mark.parametrize("command,option,value", BAD)
def test_bad_numbers_are_usage_errors_at_parse_time(command, option, value, tmp_path, monkeypatch, capsys):
    _no_long_work(monkeypatch)
    run = tmp_path / "missing-run"  # a run would be looked up (exit 3) only after parsing
    extra = {"complete": ["--mask", "top-half"], "fvd": ["--i3d", str(tmp_path / "i3d.pt")]}.get(command, [])
    assert main([command, str(run), *extra, f"{option}={value}", "--device", "cpu"]) == 2  # = lets "-1" through
    line = _one_line_error(capsys.readouterr().err)
    assert f"argument {option}" in line and repr(value) in line, line


def test_good_numbers_parse():
    parser = build_parser()
    args = parser.parse_args(["sample", "r", "--temperature", "0.5", "--top-p", "1", "--top-k", "1", "--steps", "1",
                              "--nrow", "1", "-n", "1", "--seed", str(2**64 - 1), "--class", "0"])
    assert (args.temperature, args.top_p, args.top_k, args.steps, args.nrow, args.num, args.seed) == \
        (0.5, 1.0, 1, 1, 1, 1, 2**64 - 1)
    args = parser.parse_args(["fid", "r", "--n", "1", "--reference-n", "1", "--levels", "2", "--temperature", "1e-3"])
    assert (args.n, args.reference_n, args.levels, args.temperature) == (1, 1, 2, 1e-3)
    args = parser.parse_args(["fvd", "r", "--i3d", "w.pt", "--frames", "9", "--levels", "256"])
    assert args.frames == 9 and args.levels == 256


# ----- 2. output paths and names are checked before long work --------------------------------------
@pytest.mark.parametrize("command", ["sample", "complete"])
def test_output_checked_before_sampling(command, run, tmp_path, monkeypatch, capsys):
    _no_long_work(monkeypatch)
    extra = ["--mask", "top-half"] if command == "complete" else []
    base = [command, str(run), *extra, "-n", "2", "--device", "cpu"]
    for name in ("s.xyz", "s.jpg", "s.webp", "s"):  # unknown, lossy, or no format
        assert main([*base, "-o", str(tmp_path / name)]) == 2, name
        line = _one_line_error(capsys.readouterr().err)
        assert "lossless image" in line and ".png" in line and ".tmp" not in line and "/." not in line, line
    assert main([*base, "-o", str(tmp_path / "no" / "such" / "s.png")]) == 3  # the folder must exist
    line = _one_line_error(capsys.readouterr().err)
    assert "does not exist" in line and str(tmp_path / "no" / "such") in line
    assert not (tmp_path / "no").exists()
    assert main([*base, "-o", str(tmp_path)]) == 3  # a folder is not an output file
    assert "is a directory" in _one_line_error(capsys.readouterr().err)
    (tmp_path / "file").write_text("x")
    assert main([*base, "-o", str(tmp_path / "file" / "s.png")]) == 2
    assert "not a folder" in _one_line_error(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no temporary files left behind


def test_sampling_options_the_model_does_not_declare_are_refused(run, tmp_path, capsys):
    """--steps needs a model declaring parallel_steps, --cfg-scale != 1 one declaring guidance."""
    base = ["sample", str(run), "-n", "1", "-o", str(tmp_path / "s.png"), "--device", "cpu"]
    assert main([*base, "--cfg-scale", "2"]) == 2
    assert "null (unconditional)" in _one_line_error(capsys.readouterr().err)
    assert main([*base, "--steps", "3"]) == 2
    assert "sample in parallel" in _one_line_error(capsys.readouterr().err)
    assert main([*base, "--cfg-scale", "1"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.png"]


def test_sample_overwrites_an_existing_output_atomically(run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.png"
    out.write_bytes(b"old")
    assert main(["sample", str(run), "-n", "2", "-o", str(out), "--device", "cpu", "--seed", "3"]) == 0
    first = read_image(out)
    assert first.shape == (2 + 30, 2 + 2 * 30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.png"]

    import imageio.v3 as iio

    def broken(path, *a, **k):
        Path(path).write_bytes(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(iio, "imwrite", broken)
    assert main(["sample", str(run), "-n", "2", "-o", str(out), "--device", "cpu", "--seed", "4"]) == 1
    assert np.array_equal(read_image(out), first)  # the old grid survives a failed write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.png"]


def test_eval_checks_sample_metric_options_first(run, tmp_path, monkeypatch, capsys):
    _no_long_work(monkeypatch)
    base = ["eval", str(run), "--max-examples", "2", "--device", "cpu"]
    for extra in (["--sample-metrics", "fid", "--sample-features", "nosuch"], ["--sample-features", "nosuch"],
                  ["--sample-metrics", "is", "--is-network", "nosuch"]):
        assert main([*base, *extra]) == 2, extra
        line = _one_line_error(capsys.readouterr().err)
        assert "nosuch" in line and "'mnist'" in line, line
    assert main([*base, "--sample-metrics", "fid", "--sample-features", str(tmp_path / "net.pt")]) == 3
    assert "no network file" in _one_line_error(capsys.readouterr().err)
    assert main([*base, "--sample-metrics", "fid,nosuch"]) == 2
    assert "argument --sample-metrics" in _one_line_error(capsys.readouterr().err)
    assert not (run / "eval.json").exists()


def test_fid_checks_its_options_first(run, tmp_path, monkeypatch, capsys):
    _no_long_work(monkeypatch)
    base = ["fid", str(run), "--features", "mnist", "--device", "cpu", "--no-progress"]
    assert main([*base, "--n", "0"]) == 2
    assert "argument --n" in _one_line_error(capsys.readouterr().err)
    assert main([*base, "--n", "2", "--json", str(tmp_path)]) == 3  # a folder: would fail only after the work
    assert "--json" in _one_line_error(capsys.readouterr().err)
    assert main(["fid", str(run), "--features", "nosuch", "--n", "2", "--device", "cpu"]) == 2
    assert "--features" in _one_line_error(capsys.readouterr().err)


# ----- 3. a NaN figure is an error, never a result --------------------------------------------------
def test_eval_refuses_non_finite_bits_per_dim(tmp_path, capsys):
    torch.manual_seed(0)
    model = argen.create_model("pixelcnn", image_shape=(1, 28, 28), levels=4, **tiny_kwargs("pixelcnn"))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e30)  # finite weights whose activations overflow: log-likelihoods come out NaN
    argen.save(model, tmp_path / "run", data="mnist-2bit")
    assert main(["eval", str(tmp_path / "run"), "--max-examples", "4", "--batch-size", "4", "--device", "cpu"]) == 3
    captured = capsys.readouterr()
    assert "non-finite log-likelihoods" in _one_line_error(captured.err)
    assert "bits/dim over" not in captured.out and "nan" not in captured.out.lower()
    assert not (tmp_path / "run" / "eval.json").exists()


def test_fid_refuses_non_finite_results(run, tmp_path, monkeypatch, capsys):
    np.save(tmp_path / "samples.npy", np.zeros((4, 28, 28), dtype=np.uint8))

    def nan_quality(*a, **k):
        return {"n": 4, "features": "MNIST features", "reference_n": 40, "fid_mnist": math.nan}

    monkeypatch.setattr("argen.metrics.quality.batches_quality", nan_quality)
    out = tmp_path / "fid.json"
    assert main(["fid", str(tmp_path / "samples.npy"), "--data", "mnist", "--features", "mnist", "--json", str(out),
                 "--device", "cpu", "--no-progress"]) == 3
    captured = capsys.readouterr()
    assert "fid_mnist = nan" in _one_line_error(captured.err) and "non-finite" in captured.err
    assert "fid_mnist" not in captured.out and not out.exists()

    monkeypatch.setattr("argen.metrics.quality.sample_quality", nan_quality)
    assert main(["eval", str(run), "--max-examples", "2", "--device", "cpu", "--sample-metrics", "fid",
                 "--sample-n", "2"]) == 3
    assert "non-finite" in _one_line_error(capsys.readouterr().err)
    assert not (run / "eval.json").exists()


# ----- 4. the printed FID is the in-process figure ---------------------------------------------------
def test_fid_command_matches_the_python_api(run, tmp_path, capsys):
    from argen.data import load_dataset
    from argen.metrics.features import load_feature_extractor
    from argen.metrics.quality import batches_quality, sample_batches

    out = tmp_path / "fid.json"
    assert main(["fid", str(run), "--features", "mnist", "--n", "4", "--batch-size", "4", "--reference-n", "40",
                 "--seed", "5", "--cache-dir", str(tmp_path / "cli-cache"), "--json", str(out), "--device", "cpu",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    model = argen.load(run, device="cpu")
    expect = batches_quality(sample_batches(model, 4, 4, seed=5), model.levels, load_dataset("mnist-2bit", "test"),
                             metrics=["fid"], features=load_feature_extractor("mnist", "cpu"), reference_n=40,
                             batch_size=4, total=4, cache_dir=tmp_path / "api-cache")
    assert f"fid_mnist = {expect['fid_mnist']:.6g}\n" in printed
    record = json.loads(out.read_text())
    assert record["n"] == 4 and record["reference_n"] == 40
    assert record["fid_mnist"] == pytest.approx(expect["fid_mnist"], rel=1e-9)


def test_train_out_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    f = tmp_path / "exfile"
    f.write_text("x")
    assert main(["train", "pixelcnn", "--steps", "1", "--out", str(f)]) == 2
    err = capsys.readouterr()
    assert "is a file, expected a run directory" in err.err and "training" not in err.out
    assert f.read_text() == "x"
