"""`argen compress` / `argen decompress` on bad input: usage errors, file errors, safe writes."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import argen
from argen.cli import main
from argen.data.images import read_image, write_image
from tests.helpers import make_tiny

LOSSLESS = [".png", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".npy"]  # every suffix argen restores


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("run") / "run"
    argen.save(make_tiny("pixelcnn", (1, 6, 5), 4), path)
    return path


def _write(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".npy":
        np.save(path, img if img.ndim == 3 and img.shape[0] in (1, 3) else img[None])
    else:
        write_image(path, img)
    return path


def _read(path: Path) -> np.ndarray:
    return np.load(path)[0] if path.suffix.lower() == ".npy" else read_image(path)


@pytest.fixture()
def inputs(tmp_path) -> list[tuple[Path, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(3):
        img = rng.integers(0, 4, (6, 5)).astype(np.uint8)
        out.append((_write(tmp_path / "in" / f"img{i}.png", img), img))
    return out


def _compress(run, files, out, *extra) -> int:
    return main(["compress", str(run), *map(str, files), "-o", str(out), "--device", "cpu", *extra])


def _decompress(archive, out, *extra) -> int:
    return main(["decompress", str(archive), "-o", str(out), "--device", "cpu", *extra])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("argen: error:"), err
    return err


# ----- numeric options ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["-1", "0", "x", "1.5", "nan"])
def test_bad_batch_size_is_a_usage_error(run, inputs, tmp_path, capsys, bad):
    """--batch-size -1 used to exit 0 with an archive holding no images."""
    out = tmp_path / "x.argz"
    assert _compress(run, [p for p, _ in inputs], out, "--batch-size", bad) == 2
    err = capsys.readouterr().err.strip().splitlines()  # argparse: the usage, then one error line
    assert err[-1].startswith("argen: error: argument --batch-size:") and not out.exists()


# ----- unreadable inputs -------------------------------------------------------------------------
@pytest.mark.parametrize("name,content", [("empty.png", b""), ("text.png", b"not an image at all"),
                                          ("empty.npy", b""), ("text.npy", b"not an array"),
                                          ("cut.png", None)])
def test_unreadable_image_is_a_usage_error_naming_it(run, inputs, tmp_path, capsys, name, content):
    bad = tmp_path / "in" / name
    if content is None:  # a truncated PNG
        content = inputs[0][0].read_bytes()[:30]
    bad.write_bytes(content)
    out = tmp_path / "x.argz"
    assert _compress(run, [inputs[0][0], bad], out) == 2
    err = _one_error_line(capsys)
    assert str(bad) in err and "backend" not in err
    assert not out.exists()


def test_missing_image_is_a_file_error(run, inputs, tmp_path, capsys):
    assert _compress(run, [inputs[0][0], tmp_path / "nope.png"], tmp_path / "x.argz") == 3
    assert "nope.png" in _one_error_line(capsys)


def test_lossy_input_and_duplicate_names_refused(run, inputs, tmp_path, capsys):
    jpg = tmp_path / "in" / "a.jpg"
    jpg.write_bytes(b"whatever")
    assert _compress(run, [inputs[0][0], jpg], tmp_path / "x.argz") == 2
    assert "lossless" in _one_error_line(capsys)
    twin = _write(tmp_path / "other" / inputs[0][0].name, inputs[0][1])
    assert _compress(run, [inputs[0][0], twin], tmp_path / "x.argz") == 2
    assert "distinct" in _one_error_line(capsys)


# ----- archives ----------------------------------------------------------------------------------
_PREFIX = struct.Struct("<4sBI")


def _with_header(data: bytes, **changes) -> bytes:
    _, version, head_len = _PREFIX.unpack_from(data)
    end = _PREFIX.size + head_len
    header = json.loads(zlib.decompress(data[_PREFIX.size:end]))
    header.update(changes)
    head = zlib.compress(json.dumps(header).encode())
    return _PREFIX.pack(b"ARGZ", version, len(head)) + head + data[end:]


@pytest.mark.parametrize("tail", [b"\x00\x00\x00\x00", b"\x07\x00\x00\x00", b"junk!"])
def test_trailing_garbage_is_a_corrupt_archive(run, inputs, tmp_path, capsys, tail):
    archive = tmp_path / "x.argz"
    assert _compress(run, [p for p, _ in inputs], archive) == 0
    archive.write_bytes(archive.read_bytes() + tail)
    capsys.readouterr()
    assert _decompress(archive, tmp_path / "out") == 3
    assert "corrupt archive" in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("names", [["img0.png", "img1.png"], ["img0.png", "img0.png", "img2.png"],
                                   ["img0.png", "img1.png", "img2.jpg"], ["img0.png", "img1.png", "../img2.png"]])
def test_crafted_names_are_a_corrupt_archive(run, inputs, tmp_path, capsys, names):
    archive = tmp_path / "x.argz"
    assert _compress(run, [p for p, _ in inputs], archive) == 0
    archive.write_bytes(_with_header(archive.read_bytes(), names=names))
    capsys.readouterr()
    assert _decompress(archive, tmp_path / "out" / "sub") == 3
    assert "corrupt archive" in _one_error_line(capsys)
    assert not (tmp_path / "out").exists() and not (tmp_path / "img2.png").exists()


def test_unnamed_archive_restores_png(run, tmp_path):
    from argen.compress import compress_arrays

    model = argen.load(run, device="cpu")
    imgs = np.random.default_rng(5).integers(0, 4, (2, 1, 6, 5)).astype(np.uint8)
    f = compress_arrays(model, imgs)
    f.header["run"] = str(run)
    (tmp_path / "x.argz").write_bytes(f.to_bytes())
    assert _decompress(tmp_path / "x.argz", tmp_path / "out") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["image_00000.png", "image_00001.png"]
    assert np.array_equal(read_image(tmp_path / "out" / "image_00001.png"), imgs[1, 0])


# ----- every lossless format restores bit for bit ------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_every_lossless_format_round_trips_exactly(tmp_path, channels):
    run = tmp_path / "run"
    argen.save(make_tiny("pixelcnn", (channels, 4, 5), 256), run)
    rng = np.random.default_rng(channels)
    files = []
    for i, suffix in enumerate(LOSSLESS + [".PNG"]):
        shape = (4, 5) if channels == 1 else (4, 5, 3)
        img = rng.integers(0, 256, shape).astype(np.uint8)
        img.flat[0], img.flat[1] = 0, 255
        stored = np.moveaxis(img, -1, 0) if (channels == 3 and suffix == ".npy") else img
        files.append((_write(tmp_path / "in" / f"f{i}{suffix}", stored), stored))
    archive = tmp_path / "x.argz"
    assert _compress(run, [p for p, _ in files], archive, "--batch-size", "3") == 0
    assert _decompress(archive, tmp_path / "out") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p, _ in files)
    for path, img in files:
        restored = tmp_path / "out" / path.name
        got = np.load(restored) if path.suffix == ".npy" else read_image(restored)
        want = img if path.suffix == ".npy" and channels == 3 else (img[None] if path.suffix == ".npy" else img)
        assert got.dtype == np.uint8 and np.array_equal(got, want), path.name


# ----- existing outputs and atomic writes ---------------------------------------------------------
def test_existing_archive_refused_unless_overwrite(run, inputs, tmp_path, capsys):
    out = tmp_path / "x.argz"
    out.write_bytes(b"precious")
    assert _compress(run, [p for p, _ in inputs], out) == 2
    assert "--overwrite" in _one_error_line(capsys)
    assert out.read_bytes() == b"precious"
    assert _compress(run, [p for p, _ in inputs], out, "--overwrite") == 0
    assert out.read_bytes()[:4] == b"ARGZ"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "x.argz"]  # no temporary left behind
    capsys.readouterr()
    assert _compress(run, [p for p, _ in inputs], tmp_path / "in") == 2  # a directory
    assert "directory" in _one_error_line(capsys)


def test_decompress_refuses_to_clobber(run, inputs, tmp_path, capsys):
    archive = tmp_path / "x.argz"
    assert _compress(run, [p for p, _ in inputs], archive) == 0
    a_file = tmp_path / "afile"
    a_file.write_text("keep")
    capsys.readouterr()
    assert _decompress(archive, a_file) == 2  # used to be FileExistsError, exit 1
    assert "not a directory" in _one_error_line(capsys)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "img1.png").write_bytes(b"keep")
    (existing / "other.txt").write_text("keep")
    assert _decompress(archive, existing) == 2
    assert "--overwrite" in _one_error_line(capsys)
    assert (existing / "img1.png").read_bytes() == b"keep"
    assert _decompress(archive, existing, "--overwrite") == 0
    for path, img in inputs:
        assert np.array_equal(read_image(existing / path.name), img)
    assert sorted(p.name for p in existing.iterdir()) == ["img0.png", "img1.png", "img2.png", "other.txt"]


def test_interrupted_writes_leave_nothing_half_done(run, inputs, tmp_path, monkeypatch):
    from argen.compress import commands

    archive = tmp_path / "x.argz"
    real_fsync = commands.os.fsync

    def killed(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands.os, "fsync", killed)
    assert _compress(run, [p for p, _ in inputs], archive) == 130
    monkeypatch.setattr(commands.os, "fsync", real_fsync)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no archive, no temporary file

    assert _compress(run, [p for p, _ in inputs], archive) == 0
    real_write = commands.write_pixels
    calls = []

    def write_then_die(path, arr):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_write(path, arr)

    monkeypatch.setattr(commands, "write_pixels", write_then_die)
    out = tmp_path / "restored"
    assert _decompress(archive, out) == 130
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "x.argz"]  # no partial directory
    monkeypatch.setattr(commands, "write_pixels", real_write)
    assert _decompress(archive, out) == 0
    for path, img in inputs:
        assert np.array_equal(read_image(out / path.name), img)
