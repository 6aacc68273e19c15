"""Crash safety of the trainer's checkpoint set: every prefix of a save's writes resumes, damaged
states are refused (exit 3), finished runs are not redone, and `argen train` refuses settings the
dataset decides."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import argen
from argen import checkpoint as ckpt
from argen.checkpoint import CorruptCheckpointError, weights_fingerprint
from argen.cli import main
from argen.train import Trainer
from argen.train.trainer import STATE_FILE, read_train_state
from tests.test_train import TinyData, _rng_loss, quiet, tiny_model

WRITES_PER_SAVE = 4  # train_state.pt, model.safetensors, ema.safetensors, config.json


class Killed(BaseException):
    """Stands for SIGKILL in the middle of a write."""


def _kill_after(monkeypatch, renames: int) -> list[str]:
    """Let `renames` file writes complete; the next one dies, leaving its temporary behind."""
    real, done = ckpt._replace, []

    def replace(src, dst):
        if len(done) >= renames:
            # what a SIGKILL leaves: the temporary (under mkstemp's name pattern), never renamed
            shutil.copy(src, Path(dst).parent / f".{Path(dst).name}.killed00.tmp")
            raise Killed(f"killed while writing {Path(dst).name}")
        real(src, dst)
        done.append(Path(dst).name)

    monkeypatch.setattr(ckpt, "_replace", replace)
    return done


def _trainer(run: Path, resume=False, steps: int = 5) -> Trainer:
    # 24 examples, batch 8: 3 steps per epoch; checkpoints at steps 2 and 4, the end at 5
    cfg = quiet(steps=steps, checkpoint_every=2, ema_decay=0.9, schedule="cosine", warmup_steps=2)
    return Trainer(_rng_loss(tiny_model(num_classes=3)), TinyData(24), cfg, run_dir=run, device="cpu",
                   resume=resume, extra={"data": "tiny"})


def _assert_consistent(run: Path) -> None:
    desc = json.loads((run / "config.json").read_text())
    for name, rec in desc["files"].items():
        assert ckpt.file_record((run / name).read_bytes()) == rec, name
    assert not list(run.glob(".*.tmp")), list(run.glob(".*.tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    trainer = _trainer(tmp_path_factory.mktemp("ref") / "run")
    trainer.fit()
    return weights_fingerprint(trainer.model), weights_fingerprint(trainer.ema.module)


@pytest.mark.parametrize("renames", range(3 * WRITES_PER_SAVE))
def test_every_prefix_of_the_writes_resumes(tmp_path, monkeypatch, reference, renames):
    """Kill after each prefix of the writes of the saves at steps 2, 4 and 5, then resume."""
    run = tmp_path / "run"
    done = _kill_after(monkeypatch, renames)
    with pytest.raises(Killed):
        _trainer(run).fit()
    assert len(done) == renames
    monkeypatch.undo()
    assert list(run.glob(".*.tmp"))  # the killed write left its temporary

    # meanwhile, loading the run either works with a matching set or refuses: never a mixed set
    try:
        model = argen.load(run)
        _assert_consistent_for_load(run)
        assert model.checkpoint_step == json.loads((run / "config.json").read_text())["step"]
    except (CorruptCheckpointError, FileNotFoundError):
        pass

    saves, partial = divmod(renames, WRITES_PER_SAVE)
    if saves == 0 and partial == 0:  # nothing of the first checkpoint landed: nothing to resume
        with pytest.raises(FileNotFoundError, match="nothing to resume"):
            _trainer(run, resume=True)
        return
    state_step = [2, 4, 5][saves if partial else saves - 1]
    resumed = _trainer(run, resume=True)
    assert resumed.step == state_step
    assert not list(run.glob(".*.tmp"))  # the stale temporary is gone
    assert (resumed.resume_note is not None) == (partial != 0)  # an incomplete set is completed, and said so
    if partial:
        assert "not completely written" in resumed.resume_note
    _assert_consistent(run)  # resuming completed the set and removed the stale temporaries
    assert not read_train_state(run).export_needed
    resumed.fit()
    assert (weights_fingerprint(resumed.model), weights_fingerprint(resumed.ema.module)) == reference
    assert argen.load(run).checkpoint_step == 5
    _assert_consistent(run)


def _assert_consistent_for_load(run: Path) -> None:
    desc = json.loads((run / "config.json").read_text())
    name = "ema.safetensors" if "ema.safetensors" in desc["files"] else "model.safetensors"
    assert ckpt.file_record((run / name).read_bytes()) == desc["files"][name]


def _finished_run(tmp_path) -> Path:
    run = tmp_path / "run"
    _trainer(run).fit()
    return run


@pytest.mark.parametrize("damage", ["empty", "truncated", "bit flip", "not a state", "missing key"])
def test_damaged_train_state_is_corrupt(tmp_path, damage):
    run = _finished_run(tmp_path)
    path = run / STATE_FILE
    data = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "bit flip":
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x08  # inside tensor data: torch.load itself does not notice
        path.write_bytes(bytes(flipped))
    else:
        state = torch.load(path, weights_only=True)
        if damage == "not a state":
            state = {"hello": 1}
        else:
            del state["optimizer"]
        torch.save(state, path)
    with pytest.raises(CorruptCheckpointError, match="corrupt checkpoint: .*train_state.pt"):
        _trainer(run, resume=True)


def test_resuming_a_finished_run_is_a_no_op(tmp_path):
    run = tmp_path / "run"
    cfg = quiet(steps=3, checkpoint_every=2, ema_decay=0.9, eval_examples=8)
    first = Trainer(tiny_model(), TinyData(24), cfg, run_dir=run, eval_data=TinyData(8, seed=1), device="cpu")
    done = first.fit()
    metrics = (run / "metrics.jsonl").read_text()
    config = (run / "config.json").read_bytes()
    again = Trainer(tiny_model(), TinyData(24), cfg, run_dir=run, eval_data=TinyData(8, seed=1), device="cpu",
                    resume=True)
    assert again.step == 3
    assert again.fit() == done
    assert (run / "metrics.jsonl").read_text() == metrics  # no second test_bpd line
    assert (run / "config.json").read_bytes() == config
    assert again.finished
    more = Trainer(tiny_model(), TinyData(24), quiet(steps=4, checkpoint_every=2, ema_decay=0.9, eval_examples=8),
                   run_dir=run, eval_data=TinyData(8, seed=1), device="cpu", resume=True)
    assert not more.finished  # more steps: training continues
    more.fit()
    steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "test_bpd" in r]
    assert steps == [3, 4]


def test_old_format_state_still_resumes(tmp_path, monkeypatch, reference):
    """A train_state.pt of format 1 (no digest) with a config.json without checksums resumes."""
    run = tmp_path / "run"
    _kill_after(monkeypatch, 2 * WRITES_PER_SAVE)
    with pytest.raises(Killed):
        _trainer(run).fit()  # the complete set of step 4, then rewritten in the old format
    monkeypatch.undo()
    state = torch.load(run / STATE_FILE, weights_only=True)
    for key in ("digest", "extra", "finished"):
        del state[key]
    state["format_version"] = 1
    torch.save(state, run / STATE_FILE)
    desc = json.loads((run / "config.json").read_text())
    del desc["files"]
    (run / "config.json").write_text(json.dumps(desc))
    point = read_train_state(run)
    assert not point.export_needed and point.description()["data"] == "tiny"
    resumed = _trainer(run, resume=True)
    assert resumed.step == 4
    resumed.fit()
    assert (weights_fingerprint(resumed.model), weights_fingerprint(resumed.ema.module)) == reference


# ----- the command line ---------------------------------------------------------------------------
TINY = ["--set", "model.hidden=12", "model.n_blocks=1", "model.head=12", "model.first_kernel=3",
        "train.eval_examples=8", "train.eval_batch_size=8", "train.sample_every=null", "train.progress=false",
        "train.tensorboard=false", "train.warmup_steps=0", "train.checkpoint_every=2"]


def _train(out: Path, *extra: str) -> int:
    return main(["train", "pixelcnn", "--data", "mnist-1bit", "--out", str(out), "--device", "cpu",
                 "--batch-size", "4", *TINY, *extra])


def test_cli_resume_after_each_kind_of_interrupted_first_save(tmp_path, monkeypatch, capsys):
    # killed after train_state.pt, before config.json (the run could not resume before: exit 3)
    out = tmp_path / "b"
    _kill_after(monkeypatch, 1)
    with pytest.raises(Killed):
        _train(out, "--steps", "3")
    monkeypatch.undo()
    assert (out / STATE_FILE).is_file() and not (out / "config.json").exists()
    capsys.readouterr()
    assert _train(out, "--steps", "3", "--resume") == 0
    printed = capsys.readouterr().out
    assert "resuming at step 2" in printed and "not completely written" in printed
    assert json.loads((out / "config.json").read_text())["step"] == 3
    _assert_consistent(out)
    # killed before anything of the first checkpoint landed: --resume starts clean, and says so
    out = tmp_path / "a"
    _kill_after(monkeypatch, 0)
    with pytest.raises(Killed):
        _train(out, "--steps", "3")
    monkeypatch.undo()
    capsys.readouterr()
    assert _train(out, "--steps", "3", "--resume") == 0
    assert "starting a new run" in capsys.readouterr().out
    _assert_consistent(out)


def test_cli_damaged_state_exits_3(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--steps", "2") == 0
    data = (out / STATE_FILE).read_bytes()
    for damaged in (b"", data[: len(data) // 3]):
        (out / STATE_FILE).write_bytes(damaged)
        capsys.readouterr()
        assert _train(out, "--steps", "4", "--resume") == 3
        err = capsys.readouterr().err
        assert err.startswith("argen: error: corrupt checkpoint") and "train_state.pt" in err
        assert len(err.strip().splitlines()) == 1
    (out / STATE_FILE).write_bytes(data)
    (out / "config.json").write_text('{"format": "argen-checkpoint", "format_version": 1}')
    assert _train(out, "--steps", "4", "--resume") == 3
    err = capsys.readouterr().err
    assert "corrupt checkpoint" in err and "config.json" in err and "'model'" in err


def test_cli_resume_finished_run_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--steps", "2") == 0
    lines = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert _train(out, "--steps", "2", "--resume") == 0
    assert "already finished at step 2" in capsys.readouterr().out
    assert (out / "metrics.jsonl").read_text() == lines


def test_cli_resume_refuses_a_model_checkpoint_without_state(tmp_path, capsys):
    out = tmp_path / "run"
    ckpt.save(tiny_model(), out, step=1)
    assert _train(out, "--steps", "2", "--resume") == 3
    assert "no train_state.pt" in capsys.readouterr().err
    assert (out / "model.safetensors").is_file()  # left alone


@pytest.mark.parametrize("setting", ["model.levels=16", "model.image_shape=[3,8,8]", "model.image_shape=[1,8,8]"])
def test_cli_refuses_settings_the_dataset_decides(tmp_path, setting, capsys):
    assert _train(tmp_path / "run", "--steps", "1", "--set", setting) == 2
    err = capsys.readouterr().err
    assert "decided by the dataset" in err and "mnist-1bit" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_cli_accepts_dataset_settings_equal_to_the_dataset(tmp_path):
    assert _train(tmp_path / "run", "--steps", "1", "--set", "model.levels=2", "model.image_shape=[1,28,28]") == 0


@pytest.mark.parametrize("option", [["--lr", "inf"], ["--lr", "nan"], ["--lr", "0"], ["--batch-size", "0"],
                                    ["--steps", "1.5"], ["--seed", "-1"], ["--set", "train.lr=inf"],
                                    ["--set", "train.lr=nan"], ["--set", "train.betas=[0.9,1.0]"]])
def test_cli_numeric_train_options_are_checked_up_front(tmp_path, option, capsys):
    assert _train(tmp_path / "run", "--steps", "1", *option) == 2
    err = capsys.readouterr().err
    assert "argen: error:" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
