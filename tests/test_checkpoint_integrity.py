"""Checkpoint integrity: checksums in config.json, non-finite weights, malformed descriptions,
file permissions and stale temporaries (argen.checkpoint, `load_run` and `argen eval` exit codes)."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import argen
from argen import checkpoint as ckpt
from argen.checkpoint import CorruptCheckpointError, weights_fingerprint
from argen.cli import CheckpointError, load_run, main
from argen.registry import tiny_kwargs
from argen.train.ema import EMA


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return argen.create_model("pixelcnn", image_shape=(1, 8, 8), levels=4, **tiny_kwargs("pixelcnn"))


@pytest.fixture
def run(tmp_path) -> Path:
    """A run with model and EMA weights, as the trainer writes it (config.json records checksums)."""
    model = _model()
    ema = EMA(model, 0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    out = tmp_path / "run"
    ckpt.save(model, out, step=3, ema=ema.module, data="mnist-2bit")
    return out


def _flip(path: Path, offset_from_end: int = 5) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x40  # inside the last tensor's bytes: still parses as safetensors
    path.write_bytes(bytes(data))


def _rewrite_config(run: Path, **changes) -> None:
    desc = json.loads((run / "config.json").read_text())
    desc.update(changes)
    for key, value in list(desc.items()):
        if value is _DROP:
            del desc[key]
    (run / "config.json").write_text(json.dumps(desc))


_DROP = object()


def test_config_records_checksums_of_every_file(run):
    desc = json.loads((run / "config.json").read_text())
    assert set(desc["files"]) == {"model.safetensors", "ema.safetensors"}
    for name, rec in desc["files"].items():
        assert rec == ckpt.file_record((run / name).read_bytes())
    assert argen.load(run).checkpoint_step == 3


@pytest.mark.parametrize("name", ["ema.safetensors", "model.safetensors"])
def test_bit_flip_in_weights_is_refused(run, name, capsys):
    before = weights_fingerprint(argen.load(run, prefer_ema=name == "ema.safetensors"))
    _flip(run / name)
    with pytest.raises(CorruptCheckpointError, match="corrupt checkpoint: .*" + name.replace(".", r"\.")):
        argen.load(run, prefer_ema=name == "ema.safetensors")
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        load_run(run) if name == "ema.safetensors" else load_run_raw(run)
    _rewrite_config(run, files=_DROP)  # without the record (an old run) the flip goes unnoticed...
    assert weights_fingerprint(argen.load(run, prefer_ema=name == "ema.safetensors")) != before  # ...and matters
    if name == "ema.safetensors":
        ckpt.save(_model(), run, step=3, ema=_model(1))
        _flip(run / name)
        assert main(["eval", str(run), "--device", "cpu"]) == 3
        err = capsys.readouterr().err
        assert "corrupt checkpoint" in err and "checksum" in err and len(err.strip().splitlines()) == 1


def load_run_raw(run):
    try:
        return argen.load(run, prefer_ema=False)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def _nan_weights(run: Path, name: str, record: bool) -> None:
    state = load_file(str(run / name))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key][0] = float("nan")
    save_file(state, str(run / name))
    if record:  # a consistent checksum: the weights themselves are the problem
        desc = json.loads((run / "config.json").read_text())
        desc["files"][name] = ckpt.file_record((run / name).read_bytes())
        (run / "config.json").write_text(json.dumps(desc))


@pytest.mark.parametrize("legacy", [False, True])
def test_nonfinite_weights_are_refused(run, legacy, capsys):
    _nan_weights(run, "ema.safetensors", record=not legacy)
    if legacy:
        _rewrite_config(run, files=_DROP)
    with pytest.raises(CorruptCheckpointError, match="non-finite"):
        argen.load(run)
    assert main(["eval", str(run), "--device", "cpu"]) == 3
    err = capsys.readouterr().err
    assert "corrupt checkpoint" in err and "non-finite" in err and len(err.strip().splitlines()) == 1


def test_save_refuses_nonfinite_weights(tmp_path):
    model = _model()
    with torch.no_grad():
        next(model.parameters()).fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="not finite"):
        ckpt.save(model, tmp_path / "run")
    assert not (tmp_path / "run" / "config.json").exists()


def test_old_runs_without_checksums_load_unchecked(run):
    """Runs from before checksums (no "files" in config.json) load as before, without a check."""
    _rewrite_config(run, files=_DROP)
    expected = weights_fingerprint(argen.load(run))
    assert weights_fingerprint(load_run(run)) == expected


def test_unlisted_file_and_missing_file(run):
    desc = json.loads((run / "config.json").read_text())
    del desc["files"]["ema.safetensors"]
    (run / "config.json").write_text(json.dumps(desc))
    # an EMA file the description does not name is not part of the checkpoint: the raw weights load
    assert argen.load(run).checkpoint_step == 3
    (run / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        argen.load(run)


def test_saving_without_ema_removes_a_stale_ema_file(run):
    ckpt.save(_model(1), run, step=4)
    assert not (run / "ema.safetensors").exists()
    assert weights_fingerprint(argen.load(run)) == weights_fingerprint(_model(1))


MALFORMED = {
    "not json": "{ not json",
    "not utf-8": b"\xff\xfe{}",
    "a list": "[1, 2]",
    "no config": {"config": _DROP},
    "no model": {"model": _DROP},
    "config not an object": {"config": [1, 2]},
    "model not a name": {"model": 3},
    "step a string": {"step": "3"},
    "format_version a string": {"format_version": "1"},
    "files not an object": {"files": "abc"},
    "checksum not hex": {"files": {"model.safetensors": {"sha256": "xyz", "size": 3}}},
    "train not an object": {"train": "fast"},
    "unknown model": {"model": "nosuchmodel"},
    "config field of the wrong type": {"config": {"hidden": "abc"}},
    "unknown config field": {"config": {"nosuch": 1}},
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_description_is_one_clear_line(run, case, capsys):
    change = MALFORMED[case]
    path = run / "config.json"
    if isinstance(change, bytes):
        path.write_bytes(change)
    elif isinstance(change, str):
        path.write_text(change)
    else:
        desc = json.loads(path.read_text())
        for key, value in change.items():
            if value is _DROP:
                desc.pop(key)
            elif key == "config" and isinstance(value, dict):
                desc["config"].update(value)
            else:
                desc[key] = value
        path.write_text(json.dumps(desc))
    with pytest.raises(CheckpointError) as info:
        load_run(run)
    message = str(info.value)
    assert "corrupt checkpoint" in message and str(path) in message, message
    assert "KeyError" not in message and message != "'config'"
    for command in (["eval", str(run), "--device", "cpu"], ["sample", str(run), "-o", str(run / "s.png")]):
        assert main(command) == 3, command
        err = capsys.readouterr().err
        assert err.startswith("argen: error: corrupt checkpoint") and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_permissions_of_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        model = _model()
        ckpt.save(model, tmp_path / "run", ema=_model(1))
        ckpt.atomic_write_json(tmp_path / "run" / "eval.json", {"a": 1})
    finally:
        os.umask(old)
    for name in ("config.json", "model.safetensors", "ema.safetensors", "eval.json"):
        mode = stat.S_IMODE((tmp_path / "run" / name).stat().st_mode)
        assert mode == 0o666 & ~umask, (name, oct(mode))


def test_stale_temporaries_are_removed_on_save(run):
    stale = [run / ".model.safetensors.abcd1234.tmp", run / ".config.json.x_y_z_12.tmp"]
    keep = [run / ".notes.abcd1234.tmp", run / "mine.tmp"]
    for p in stale + keep:
        p.write_bytes(b"partial")
    ckpt.save(_model(), run, step=5)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in keep)  # only temporaries of checkpoint files are ours to delete


def test_fid_on_a_corrupt_run_exits_3(run, capsys, tmp_path):
    _flip(run / "ema.safetensors")
    code = main(["fid", str(run), "--features", "mnist", "--n", "2", "--device", "cpu", "--no-progress",
                 "--cache-dir", str(tmp_path / "stats")])
    err = capsys.readouterr().err
    assert code == 3 and "corrupt checkpoint" in err
