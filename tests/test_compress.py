"""Lossless compression: exact round trips, size near the model's NLL, clear errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import argen
from argen.compress import CorruptFileError, ModelMismatchError, compress_arrays, decompress_arrays, read_container
from argen.registry import tiny_kwargs
from tests.helpers import make_tiny, tiny_shapes


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = make_tiny("pixelcnn", (3, 5, 6), 8)
    with torch.no_grad():  # sharpen a random net a little so the data are far from uniform
        for p in m.parameters():
            p.mul_(3.0)
    return m


def _images(levels: int, shape=(3, 5, 6)) -> np.ndarray:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, levels, (3, *shape))
    black = np.zeros((1, *shape), dtype=np.int64)
    white = np.full((1, *shape), levels - 1)
    return np.concatenate([noise, black, white]).astype(np.uint8)


def test_round_trip_exact_including_adversarial(model):
    imgs = _images(model.levels)
    f = compress_arrays(model, imgs, batch_size=2)
    out, names = decompress_arrays(model, f.to_bytes())
    assert np.array_equal(out, imgs)
    assert names == [f"image_{i:05d}" for i in range(len(imgs))]


@pytest.mark.parametrize("name,shape,levels", [("pixelcnn", (1, 4, 4), 2), ("pixelcnn", (1, 6, 5), 256)])
def test_round_trip_other_shapes(name, shape, levels):
    m = make_tiny(name, shape, levels)
    imgs = np.random.default_rng(1).integers(0, levels, (4, *shape)).astype(np.uint8)
    out, _ = decompress_arrays(m, compress_arrays(m, imgs, names=list("abcd"), batch_size=3).to_bytes())
    assert np.array_equal(out, imgs)


CODEC_MODELS = [n for n in argen.list_models()
                if argen.create_model(n, **{**tiny_kwargs(n), "image_shape": (1, 8, 8), "levels": 4}).exact_likelihood]


@pytest.mark.parametrize("name", CODEC_MODELS)
@pytest.mark.parametrize("path", ["parallel", "stepper"])
def test_round_trip_every_model(name, path):
    """Any exact-likelihood model is a lossless codec, by either coding path."""
    shape = tiny_shapes(name)[-1][0]
    m = make_tiny(name, shape, 4)
    imgs = np.random.default_rng(2).integers(0, 4, (3, *shape)).astype(np.uint8)
    f = compress_arrays(m, imgs, batch_size=2, path=path)
    assert f.header["path"] == path
    out, _ = decompress_arrays(m, f.to_bytes())
    assert np.array_equal(out, imgs)


def test_size_close_to_nll(model):
    imgs = np.repeat(_images(model.levels), 4, axis=0)
    f = compress_arrays(model, imgs, batch_size=8)
    with torch.no_grad():
        nll_bits = float(-model.log_prob(torch.as_tensor(imgs, dtype=torch.long)).sum()) / math.log(2)
    payload_bits = 32 * len(f.words)
    assert payload_bits <= nll_bits * 1.01 + 64
    assert payload_bits >= nll_bits - 64
    assert len(f.to_bytes()) - 4 * len(f.words) < 200  # the whole header: a fixed few hundred bytes at most


def test_header_and_corruption_errors(model):
    imgs = _images(model.levels)
    data = compress_arrays(model, imgs).to_bytes()
    f = read_container(data)
    assert f.header["model"] == "pixelcnn" and f.header["shape"] == [3, 5, 6]
    with pytest.raises(CorruptFileError, match="magic"):
        read_container(b"XXXX" + data[4:])
    with pytest.raises(CorruptFileError, match="too short"):
        read_container(data[:5])
    with pytest.raises(CorruptFileError, match="truncated"):
        read_container(data[: len(data) - 2])
    with pytest.raises(CorruptFileError):
        decompress_arrays(model, data[: len(data) - 8])  # whole words missing
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF
    with pytest.raises(CorruptFileError):
        decompress_arrays(model, bytes(flipped))


def test_wrong_model_refused(model):
    data = compress_arrays(model, _images(model.levels)).to_bytes()
    other = make_tiny("pixelcnn", (3, 5, 6), 8)  # same config, different weights
    with pytest.raises(ModelMismatchError, match="different|same checkpoint"):
        decompress_arrays(other, data)


def test_bad_images_rejected(model):
    with pytest.raises(ValueError, match="shape"):
        compress_arrays(model, np.zeros((2, 1, 5, 6), dtype=np.uint8))
    with pytest.raises(ValueError, match="values"):
        compress_arrays(model, np.full((1, 3, 5, 6), 200, dtype=np.uint8))


def test_cli_round_trip_restores_names(tmp_path, capsys):
    from argen.cli import main
    from argen.data.images import read_image, write_image

    m = make_tiny("pixelcnn", (1, 6, 5), 4)
    argen.save(m, tmp_path / "run")
    rng = np.random.default_rng(3)
    files = []
    for i, suffix in enumerate([".png", ".png", ".npy"]):
        img = rng.integers(0, 4, (6, 5)).astype(np.uint8)
        path = tmp_path / "in" / f"img{i}{suffix}"
        path.parent.mkdir(exist_ok=True)
        np.save(path, img[None]) if suffix == ".npy" else write_image(path, img)
        files.append((path, img))
    out = tmp_path / "x.argz"
    assert main(["compress", str(tmp_path / "run"), *[str(p) for p, _ in files], "-o", str(out), "--device", "cpu"]) == 0
    assert main(["decompress", str(out), "-o", str(tmp_path / "out"), "--device", "cpu"]) == 0
    for path, img in files:
        restored = tmp_path / "out" / path.name
        got = np.load(restored)[0] if path.suffix == ".npy" else read_image(restored)
        assert np.array_equal(got, img)
    # a different model is refused with a usage error, not wrong pixels
    other = make_tiny("pixelcnn", (1, 6, 5), 4)
    argen.save(other, tmp_path / "other")
    capsys.readouterr()
    assert main(["decompress", str(out), "-o", str(tmp_path / "bad"), "--run", str(tmp_path / "other")]) == 2
    assert "same checkpoint" in capsys.readouterr().err
    out.write_bytes(b"nonsense")
    assert main(["decompress", str(out), "-o", str(tmp_path / "bad")]) == 3
