"""Lossless compression: exact round trips, size near the model's NLL, clear errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import argen
from argen.compress import CorruptFileError, ModelMismatchError, compress_arrays, decompress_arrays, read_container
from argen.registry import get_entry, tiny_kwargs
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


CODEC_MODELS = [n for n in argen.list_models() if get_entry(n).modality == "image"
                and argen.create_model(n, **{**tiny_kwargs(n), "image_shape": (1, 8, 8), "levels": 4}).exact_likelihood]


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


# ----- archive format 2: batch size, trailing data, versions, names (issue fixes) -------------------
import json  # noqa: E402
import struct  # noqa: E402
import zlib  # noqa: E402

_PREFIX = struct.Struct("<4sBI")


def _split(data: bytes) -> tuple[int, dict, bytes]:
    _, version, head_len = _PREFIX.unpack_from(data)
    end = _PREFIX.size + head_len
    return version, json.loads(zlib.decompress(data[_PREFIX.size:end])), data[end:]


def _rebuild(data: bytes, version: int | None = None, **changes) -> bytes:
    """The archive with header fields replaced, re-serialized the way a crafted file would be."""
    v, header, body = _split(data)
    header.update(changes)
    head = zlib.compress(json.dumps(header).encode())
    return _PREFIX.pack(b"ARGZ", v if version is None else version, len(head)) + head + body


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "4"])
def test_batch_size_must_be_a_positive_integer(model, bad):
    """A batch size of -1 used to write an archive with no images in it (data loss)."""
    with pytest.raises(ValueError, match="batch_size"):
        compress_arrays(model, _images(model.levels), batch_size=bad)


@pytest.mark.parametrize("n,batch_size", [(0, 2), (1, 3), (4, 4), (5, 2), (7, 3)])
@pytest.mark.parametrize("path", ["parallel", "stepper"])
def test_streamed_batches_round_trip(model, n, batch_size, path):
    """Batches are pushed onto the stack one by one (and decoded last first): any count and split."""
    imgs = np.random.default_rng(n).integers(0, model.levels, (n, 3, 5, 6)).astype(np.uint8)
    f = compress_arrays(model, imgs, batch_size=batch_size, path=path)
    out, _ = decompress_arrays(model, f.to_bytes())
    assert out.shape == imgs.shape and np.array_equal(out, imgs)


def test_streaming_costs_no_extra_bits(model):
    """One stream for all batches: the size does not depend on how the images are batched."""
    imgs = np.repeat(_images(model.levels), 3, axis=0)
    sizes = {len(compress_arrays(model, imgs, batch_size=b).words) for b in (1, 4, len(imgs))}
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("tail", [b"\x01\x00\x00\x00", b"\x00\x00\x00\x00", b"\xff" * 8, b"x"])
def test_trailing_data_is_corruption(model, tail):
    data = compress_arrays(model, _images(model.levels), batch_size=2).to_bytes()
    with pytest.raises(CorruptFileError, match="trailing"):
        read_container(data + tail)
    with pytest.raises(CorruptFileError):
        decompress_arrays(model, data + tail)


def test_old_and_new_format_versions_refused_clearly(model):
    data = compress_arrays(model, _images(model.levels)).to_bytes()
    assert _split(data)[0] == 2
    with pytest.raises(CorruptFileError, match="version 1 .*older argen"):
        read_container(_rebuild(data, version=1))
    with pytest.raises(CorruptFileError, match="version 3 .*newer.*upgrade"):
        read_container(_rebuild(data, version=3))


@pytest.mark.parametrize("field,value", [("batch_size", 0), ("batch_size", -1), ("n", -1), ("words", -2),
                                         ("levels", 1), ("shape", [3, 0, 6]), ("batch_size", True)])
def test_bad_header_numbers_are_corruption(model, field, value):
    data = compress_arrays(model, _images(model.levels)).to_bytes()
    with pytest.raises(CorruptFileError, match="corrupt header"):
        read_container(_rebuild(data, **{field: value}))


NAMES = ["a.png", "b.png", "c.npy", "d.bmp", "e.tif"]


@pytest.mark.parametrize("names,match", [
    (NAMES[:2], "5 image names"),  # fewer names than images: images would be dropped silently
    (NAMES[:4] + ["a.png"], "distinct"),  # duplicates overwrite each other
    (NAMES[:4] + ["a"], "distinct"),  # 'a' is restored as a.png
    (NAMES[:4] + ["../e.png"], "plain file names"),
    (NAMES[:4] + ["sub/e.png"], "plain file names"),
    (NAMES[:4] + ["sub\\e.png"], "plain file names"),
    (NAMES[:4] + ["C:e.png"], "plain file names"),
    (NAMES[:4] + [".."], "plain file names"),
    (NAMES[:4] + [""], "plain file names"),
    (NAMES[:4] + ["e.jpg"], "lossless"),
    (NAMES[:4] + ["e.JPEG"], "lossless"),
    (NAMES[:4] + [7], "strings"),
])
def test_bad_names_refused_when_compressing_and_decompressing(model, names, match):
    imgs = _images(model.levels)
    with pytest.raises(ValueError, match=match):
        compress_arrays(model, imgs, names=names)
    crafted = _rebuild(compress_arrays(model, imgs, names=NAMES).to_bytes(), names=names)
    with pytest.raises(CorruptFileError, match=match):
        read_container(crafted)
    with pytest.raises(CorruptFileError, match=match):
        decompress_arrays(model, crafted)


def test_names_are_covered_by_the_checksum(model):
    imgs = _images(model.levels)
    data = compress_arrays(model, imgs, names=NAMES, batch_size=2).to_bytes()
    out, names = decompress_arrays(model, data)
    assert names == NAMES and np.array_equal(out, imgs)
    swapped = _rebuild(data, names=[NAMES[1], NAMES[0], *NAMES[2:]])  # valid names, wrong images
    with pytest.raises(CorruptFileError, match="checksum"):
        decompress_arrays(model, swapped)
    unnamed = _rebuild(data, names=None)
    with pytest.raises(CorruptFileError, match="checksum"):
        decompress_arrays(model, unnamed)


def test_suffixless_names_restore_as_png():
    from argen.compress import restored_name

    assert restored_name("image_00000") == "image_00000.png"
    assert restored_name("a.npy") == "a.npy" and restored_name("b.TIF") == "b.TIF"
