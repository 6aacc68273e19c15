"""argen.data: embedded MNIST, views, file readers, downloads (local file:// only), Moving MNIST,
image helpers. Every file a test reads it writes itself into tmp_path."""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import argen.data as data
from argen.data import catalog, download, embedded, load_dataset
from argen.data.video import MovingMnistSource, trajectories

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# helpers that write small files in the real formats


def write_idx(path: Path, a: np.ndarray, gz: bool = False) -> Path:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    code = codes[a.dtype]
    header = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    blob = header + a.astype(a.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(blob) if gz else blob)
    return path


def write_mnist_dir(root: Path, n_train: int = 12, n_test: int = 5, gz: bool = True) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    xtr, xte = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for n in (n_train, n_test))
    ytr, yte = (rng.integers(0, 10, n).astype(np.uint8) for n in (n_train, n_test))
    sfx = ".gz" if gz else ""
    write_idx(root / f"train-images-idx3-ubyte{sfx}", xtr, gz)
    write_idx(root / f"train-labels-idx1-ubyte{sfx}", ytr, gz)
    write_idx(root / f"t10k-images-idx3-ubyte{sfx}", xte, gz)
    write_idx(root / f"t10k-labels-idx1-ubyte{sfx}", yte, gz)
    return xtr, ytr, xte, yte


def cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"fake", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist()}


def write_cifar_dir(folder: Path) -> dict[str, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{i}": cifar_batch(3, i) for i in range(1, 6)} | {"test_batch": cifar_batch(4, 9)}
    for name, b in batches.items():
        (folder / name).write_bytes(pickle.dumps(b, protocol=2))
    return batches


def png(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data.write_image(path, a)


def raw_mnist(split: str) -> np.ndarray:
    return data.embedded_mnist(split)[0]


# ------------------------------------------------------------------------------------------------
# embedded MNIST


def test_embedded_arrays_and_split():
    x_all, y_all = data.embedded_mnist("all")
    assert x_all.shape == (10000, 28, 28) and x_all.dtype == np.uint8
    assert y_all.shape == (10000,) and set(np.unique(y_all).tolist()) == set(range(10))
    assert x_all.min() == 0 and x_all.max() == 255
    tr, te = embedded.split_indices("train"), embedded.split_indices("test")
    assert len(tr) == 9000 and len(te) == 1000
    assert np.intersect1d(tr, te).size == 0 and np.union1d(tr, te).size == 10000
    assert np.bincount(y_all[te], minlength=10).tolist() == [100] * 10
    for c in range(10):  # test digits are spread evenly through each class, not bunched
        where = np.flatnonzero(y_all == c)
        gaps = np.diff(np.flatnonzero(np.isin(where, te)))
        assert set(gaps.tolist()) <= {len(where) // 100, -(-len(where) // 100)}
    # disjoint as images too, not only as indices
    train_bytes = {x.tobytes() for x in x_all[tr]}
    assert not any(x.tobytes() in train_bytes for x in x_all[te])


def test_load_mnist_item_contract():
    ds = load_dataset("mnist", "test")
    assert (ds.name, ds.shape, ds.levels, ds.num_classes, len(ds)) == ("mnist", (1, 28, 28), 256, 10, 1000)
    x, y = ds[3]
    assert x.dtype == torch.long and x.shape == (1, 28, 28) and y.dtype == torch.long and y.dim() == 0
    assert torch.equal(x[0], torch.from_numpy(raw_mnist("test")[3]).long())
    assert int(y) == int(data.embedded_mnist("test")[1][3])
    assert torch.equal(ds[-1][0], ds[len(ds) - 1][0])
    with pytest.raises(IndexError):
        ds[len(ds)]
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert xb.shape == (8, 1, 28, 28) and yb.shape == (8,)


def test_embedded_asset_is_small():
    assert data.paths.EMBEDDED_MNIST.stat().st_size < 3_000_000


def test_conversion_script_round_trip():
    spec = importlib.util.spec_from_file_location("make_embedded_mnist", ROOT / "scripts" / "make_embedded_mnist.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    x = np.concatenate([np.arange(256), np.zeros(784 - 256, int)])
    floats = [round(int(v) / 255, 3) for v in x]
    assert np.array_equal(mod.decode_digits(floats).ravel(), x.astype(np.uint8))
    floats[5] = 0.0123  # not round(k/255, 3) for any byte k
    with pytest.raises(ValueError, match="not round"):
        mod.decode_digits(floats)
    with pytest.raises(ValueError, match="multiple of 784"):
        mod.decode_digits([0.0] * 100)


# ------------------------------------------------------------------------------------------------
# views


def test_binary_view():
    ds = load_dataset("mnist-binary", "test")
    assert ds.levels == 2 and ds.shape == (1, 28, 28)
    x, _ = ds[7]
    assert set(x.unique().tolist()) <= {0, 1}
    assert torch.equal(x[0], torch.from_numpy(raw_mnist("test")[7] >= 128).long())


@pytest.mark.parametrize("bits", [1, 3, 5, 7])
def test_kbit_view(bits):
    ds = load_dataset(f"mnist-{bits}bit", "test")
    assert ds.levels == 2**bits
    x = torch.stack([ds[i][0] for i in range(20)])
    assert x.min() >= 0 and x.max() == 2**bits - 1
    raw = torch.from_numpy(raw_mnist("test")[:20].astype(np.int64))
    assert torch.equal(x[:, 0], raw >> (8 - bits))


def test_dynbin_view_redraws_per_epoch_deterministically():
    a, b = load_dataset("mnist-dynbin", "test", seed=3), load_dataset("mnist-dynbin", "test", seed=3)
    assert a.levels == 2
    x0 = a[11][0]
    assert torch.equal(x0, b[11][0]) and torch.equal(x0, a[11][0])  # same key, same draw
    a.set_epoch(1)
    x1 = a[11][0]
    assert not torch.equal(x0, x1)
    b.set_epoch(1)
    assert torch.equal(x1, b[11][0])
    assert not torch.equal(load_dataset("mnist-dynbin", "test", seed=4)[11][0], x0)
    raw = torch.from_numpy(raw_mnist("test")[11].astype(np.int64))
    draws = []
    for e in range(300):
        a.set_epoch(e)
        xe = a[11][0][0]
        assert set(xe.unique().tolist()) <= {0, 1}
        assert (xe[raw == 0] == 0).all() and (xe[raw == 255] == 1).all()
        draws.append(xe)
    mean = torch.stack(draws).double().mean(0)
    mid = (raw > 50) & (raw < 205)
    assert mid.sum() > 10
    assert (mean[mid] - raw[mid] / 255.0).abs().max() < 0.12  # Bernoulli(v/255), 300 draws
    with pytest.raises(ValueError):
        a.set_epoch(-1)


def test_color_view():
    ds = load_dataset("mnist-color", "test")
    assert ds.shape == (3, 28, 28) and ds.levels == 256 and ds.num_classes == 10
    x, x2 = ds[0][0], ds[1][0]
    assert x.shape == (3, 28, 28) and torch.equal(x, load_dataset("mnist-color", "test")[0][0])
    raw = torch.from_numpy(raw_mnist("test")[0].astype(np.int64))
    bg, fg = x[:, raw == 0], x[:, raw == 255]
    assert (bg == bg[:, :1]).all() and (fg == fg[:, :1]).all()  # one background, one foreground colour
    assert not torch.equal(bg[:, 0], fg[:, 0])
    assert not torch.equal(x[:, raw == 0][:, 0], x2[:, raw_mnist("test")[1] == 0][:, 0])  # colours vary per item
    ds.set_epoch(5)
    assert torch.equal(ds[0][0], x)  # colours do not change with the epoch


def test_chained_views_and_bad_views(tmp_path):
    ds = load_dataset("mnist-color-2bit", "test")
    assert ds.shape == (3, 28, 28) and ds.levels == 4 and int(ds[0][0].max()) <= 3
    with pytest.raises(ValueError, match="1..7"):
        load_dataset("mnist-8bit")
    with pytest.raises(ValueError, match="more than 8 levels"):
        load_dataset("mnist-binary-3bit")
    np.save(tmp_path / "rgb.npy", np.zeros((10, 3, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="1 channel"):
        load_dataset(f"npy:{tmp_path / 'rgb.npy'}-color", "all")


def test_unknown_name_and_bad_arguments():
    with pytest.raises(ValueError, match="mnist.*fashion-mnist.*cifar10.*moving-mnist"):
        load_dataset("imagenet64")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist-sepia")
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist", "validation")
    with pytest.raises(ValueError, match="root"):
        load_dataset("mnist", root="/somewhere")
    with pytest.raises(ValueError, match="seed"):
        load_dataset("mnist", seed=-1)


# ------------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    a = np.random.default_rng(0).integers(0, 256, (4, 5, 6), dtype=np.uint8)
    assert np.array_equal(data.read_idx(write_idx(tmp_path / "a.idx", a, gz)), a)
    b = np.arange(-6, 6, dtype=np.int32).reshape(3, 4) * 100000  # big-endian multi-byte type
    out = data.read_idx(write_idx(tmp_path / "b.idx", b, gz))
    assert out.dtype == np.int32 and np.array_equal(out, b)


def test_idx_corrupt_files(tmp_path):
    a = np.zeros((2, 3, 3), np.uint8)
    good = write_idx(tmp_path / "good", a).read_bytes()
    for name, blob, msg in [
        ("magic", b"\x01\x00" + good[2:], "magic"),
        ("type", good[:2] + b"\x07" + good[3:], "magic"),
        ("short", good[:-1], "need"),
        ("long", good + b"\x00", "need"),
        ("header", good[:6], "header"),
    ]:
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ValueError, match=msg):
            data.read_idx(tmp_path / name)
    (tmp_path / "badgz.gz").write_bytes(gzip.compress(good)[:-8])
    with pytest.raises(ValueError, match="gzip"):
        data.read_idx(tmp_path / "badgz.gz")


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_and_full_mnist_from_root(tmp_path, gz):
    xtr, ytr, xte, yte = write_mnist_dir(tmp_path / "fm", gz=gz)
    ds = load_dataset("fashion-mnist", "train", root=str(tmp_path / "fm"))
    assert (len(ds), ds.shape, ds.levels, ds.num_classes) == (12, (1, 28, 28), 256, 10)
    x, y = ds[4]
    assert np.array_equal(x[0].numpy(), xtr[4]) and int(y) == ytr[4]
    assert ds.class_names[0] == "T-shirt/top"
    assert len(load_dataset("fashion-mnist", "test", root=str(tmp_path / "fm"))) == 5
    assert len(load_dataset("mnist-full-binary", "all", root=str(tmp_path / "fm"))) == 17


def test_idx_split_mismatch_and_missing(tmp_path, monkeypatch):
    write_mnist_dir(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="4 labels for 5 images"):
        data.read_idx_split(tmp_path, "test")
    monkeypatch.setattr(catalog, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    monkeypatch.setenv("ARGEN_DATA_HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_list_datasets_reports_availability(tmp_path, monkeypatch):
    monkeypatch.setenv("ARGEN_DATA_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(catalog, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    infos = {i.name: i for i in data.list_datasets()}
    assert {"mnist", "mnist-binary", "mnist-dynbin", "mnist-color", "moving-mnist", "fashion-mnist", "cifar10",
            "folder:PATH", "npy:PATH"} <= set(infos)
    assert infos["mnist"].available and infos["mnist"].shape == (1, 28, 28)
    assert infos["moving-mnist"].shape == (20, 1, 64, 64) and infos["moving-mnist"].num_classes is None
    assert not infos["fashion-mnist"].available and "debian" in infos["fashion-mnist"].location
    write_mnist_dir(tmp_path / "debian")
    fm = {i.name: i for i in data.list_datasets()}["fashion-mnist"]
    assert fm.available and fm.location == str(tmp_path / "debian")
    assert len(load_dataset("fashion-mnist")) == 12  # found at the (patched) Debian path, no root


# ------------------------------------------------------------------------------------------------
# CIFAR-10


def test_cifar10_batches(tmp_path):
    batches = write_cifar_dir(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", "train", root=str(tmp_path))
    assert (len(ds), ds.shape, ds.levels, ds.num_classes) == (15, (3, 32, 32), 256, 10)
    assert ds.class_names[0] == "airplane"
    b2 = batches["data_batch_2"]
    x, y = ds[3]  # first item of data_batch_2
    assert int(y) == b2[b"labels"][0]
    row = b2[b"data"][0]
    assert np.array_equal(x[0].numpy().ravel(), row[:1024]) and np.array_equal(x[2].numpy().ravel(), row[2048:])
    assert len(load_dataset("cifar10", "test", root=str(tmp_path / "cifar-10-batches-py"))) == 4
    assert load_dataset("cifar10-3bit", "all", root=str(tmp_path)).levels == 8


def test_cifar10_from_archive_and_bad_pickles(tmp_path):
    src = tmp_path / "src" / "cifar-10-batches-py"
    write_cifar_dir(src)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    x, _ = data.read_cifar10(tmp_path, "test")
    assert x.shape == (4, 3, 32, 32)

    class Evil:
        def __reduce__(self):
            return (print, ("should never run",))

    bad = tmp_path / "bad"
    write_cifar_dir(bad)
    (bad / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing"):
        data.read_cifar10(bad, "test")
    (bad / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match="3072"):
        data.read_cifar10(bad, "test")
    (bad / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a CIFAR-10"):
        data.read_cifar10(bad, "test")
    with pytest.raises(FileNotFoundError, match="download_cifar10"):
        data.read_cifar10(tmp_path / "empty", "train")


# ------------------------------------------------------------------------------------------------
# folders of images and NumPy arrays


def test_image_folder_with_classes(tmp_path):
    rng = np.random.default_rng(0)
    imgs = {}
    for cls in ("cat", "ant"):
        for i in range(10):
            a = rng.integers(0, 256, (6, 5), dtype=np.uint8)
            png(tmp_path / "pics" / cls / f"{i:02d}.png", a)
            imgs[(cls, i)] = a
    (tmp_path / "pics" / "notes.txt").write_text("ignored")
    ds = load_dataset(f"folder:{tmp_path / 'pics'}", "all")
    assert (len(ds), ds.shape, ds.levels, ds.num_classes, ds.class_names) == (20, (1, 6, 5), 256, 2, ["ant", "cat"])
    x, y = ds[12]  # sorted: ant 0..9, then cat 0..9
    assert int(y) == 1 and np.array_equal(x[0].numpy(), imgs[("cat", 2)])
    tr, te = load_dataset(f"folder:{tmp_path / 'pics'}", "train"), load_dataset(f"folder:{tmp_path / 'pics'}", "test")
    assert (len(tr), len(te)) == (18, 2) and sorted(int(te[i][1]) for i in range(2)) == [0, 1]
    # relative path under root, plus a view suffix
    ds = load_dataset("folder:pics-binary", "all", root=str(tmp_path))
    assert ds.levels == 2 and ds.name.endswith("-binary")


def test_image_folder_flat_rgb_and_errors(tmp_path):
    png(tmp_path / "flat" / "a.png", np.full((4, 4), 9, np.uint8))
    png(tmp_path / "flat" / "b.png", np.zeros((4, 4, 3), np.uint8) + np.array([1, 2, 3], np.uint8))
    ds = load_dataset(f"folder:{tmp_path / 'flat'}", "all")
    assert ds.shape == (3, 4, 4) and ds.num_classes is None and int(ds[0][1]) == -1
    assert (ds[0][0] == 9).all() and ds[1][0][:, 0, 0].tolist() == [1, 2, 3]
    png(tmp_path / "flat" / "c.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(ValueError, match="one size"):
        load_dataset(f"folder:{tmp_path / 'flat'}", "all")
    png(tmp_path / "split" / "train" / "x.png", np.zeros((3, 3), np.uint8))
    png(tmp_path / "split" / "test" / "y.png", np.ones((3, 3), np.uint8))
    assert int(load_dataset(f"folder:{tmp_path / 'split'}", "test")[0][0].max()) == 1
    with pytest.raises(FileNotFoundError):
        load_dataset(f"folder:{tmp_path / 'missing'}")


def test_npy_arrays(tmp_path):
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (20, 8, 7, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", hwc)
    np.save(tmp_path / "x_labels.npy", np.arange(20) % 4)
    ds = load_dataset(f"npy:{tmp_path / 'x.npy'}", "train")
    assert (len(ds), ds.shape, ds.num_classes) == (18, (3, 8, 7), 4)
    assert np.array_equal(ds[2][0].numpy(), hwc[2].transpose(2, 0, 1)) and int(ds[2][1]) == 2
    assert int(load_dataset(f"npy:{tmp_path / 'x.npy'}", "test")[0][1]) == 9 % 4  # item 9 is the first test item
    np.savez(tmp_path / "g.npz", images=hwc[..., 0])
    g = load_dataset(f"npy:{tmp_path / 'g.npz'}-4bit", "all")
    assert g.shape == (1, 8, 7) and g.levels == 16 and int(g[0][1]) == -1
    vid = rng.integers(0, 256, (10, 4, 1, 6, 6), dtype=np.uint8)
    np.save(tmp_path / "v.npy", vid)
    v = load_dataset(f"npy:{tmp_path / 'v.npy'}", "all")
    assert v.shape == (4, 1, 6, 6) and np.array_equal(v[3][0].numpy(), vid[3])
    np.save(tmp_path / "f.npy", hwc.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        load_dataset(f"npy:{tmp_path / 'f.npy'}")
    np.save(tmp_path / "bad.npy", np.zeros((5, 8, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="channels"):
        load_dataset(f"npy:{tmp_path / 'bad.npy'}")


# ------------------------------------------------------------------------------------------------
# downloads (local file:// URLs only)


def test_download_url_checksums(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"argen" * 1000)
    md5, sha = hashlib.md5(src.read_bytes()).hexdigest(), hashlib.sha256(src.read_bytes()).hexdigest()
    out = data.download_url(src.as_uri(), tmp_path / "dl" / "a.bin", md5=md5)
    assert out.read_bytes() == src.read_bytes()
    assert data.download_url(src.as_uri(), tmp_path / "dl" / "b.bin", sha256=sha).is_file()
    with pytest.raises(ValueError, match="checksum mismatch"):
        data.download_url(src.as_uri(), tmp_path / "dl" / "c.bin", md5="0" * 32)
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["a.bin", "b.bin"]  # nothing partial left
    with pytest.raises(ValueError, match="checksum"):
        data.download_url(src.as_uri(), tmp_path / "dl" / "d.bin")
    src.unlink()  # an existing file with the right checksum is not fetched again
    assert data.download_url("file:///nonexistent", tmp_path / "dl" / "a.bin", md5=md5) == tmp_path / "dl" / "a.bin"


def test_download_mnist_from_local_mirrors(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    write_mnist_dir(mirror, n_train=3, n_test=2, gz=True)
    md5s = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in mirror.iterdir()}
    monkeypatch.setattr(download, "MNIST_MD5", md5s)
    monkeypatch.setattr(download, "MNIST_MIRRORS", [(tmp_path / "down").as_uri() + "/", mirror.as_uri() + "/"])
    root = data.download_mnist(tmp_path / "mnist")
    assert len(load_dataset("mnist-full", "train", root=str(root))) == 3
    bad = dict(md5s, **{"t10k-labels-idx1-ubyte.gz": "f" * 32})
    monkeypatch.setattr(download, "MNIST_MD5", bad)
    with pytest.raises(ValueError, match="checksum mismatch"):
        data.download_mnist(tmp_path / "mnist2")
    monkeypatch.setattr(download, "MNIST_MIRRORS", [(tmp_path / "down").as_uri() + "/"])
    with pytest.raises(OSError, match="could not download"):
        data.download_mnist(tmp_path / "mnist3")


def test_download_cifar10_from_local_archive(tmp_path, monkeypatch):
    src = tmp_path / "src" / "cifar-10-batches-py"
    write_cifar_dir(src)
    (src / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"]}))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(mirror / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    md5 = hashlib.md5((mirror / "cifar-10-python.tar.gz").read_bytes()).hexdigest()
    monkeypatch.setattr(download, "CIFAR10_MIRRORS", [mirror.as_uri() + "/"])
    monkeypatch.setattr(download, "CIFAR10_MD5", {"cifar-10-python.tar.gz": md5})
    root = data.download_cifar10(tmp_path / "c10")
    assert (root / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert len(load_dataset("cifar10", "all", root=str(root))) == 19
    monkeypatch.setattr(download, "CIFAR10_MD5", {"cifar-10-python.tar.gz": "0" * 32})
    with pytest.raises(ValueError, match="checksum mismatch"):
        data.download_cifar10(tmp_path / "c10b")


# ------------------------------------------------------------------------------------------------
# Moving MNIST and clips


def test_moving_mnist_standard_shapes_and_determinism():
    ds = load_dataset("moving-mnist", "test")
    assert (ds.shape, ds.levels, ds.num_classes, len(ds)) == ((20, 1, 64, 64), 256, None, 1000)
    x, y = ds[0]
    assert x.shape == (20, 1, 64, 64) and x.dtype == torch.long and int(y) == -1
    assert 0 <= int(x.min()) and int(x.max()) <= 255 and int(x.max()) > 200
    assert torch.equal(x, load_dataset("moving-mnist", "test")[0][0])
    assert not torch.equal(x, ds[1][0])
    assert not torch.equal(x, load_dataset("moving-mnist", "test", seed=1)[0][0])
    assert not torch.equal(x, load_dataset("moving-mnist", "train")[0][0])
    assert not torch.equal(x[0], x[1])  # it moves
    b = load_dataset("moving-mnist-binary", "test")
    assert b.levels == 2 and torch.equal(b[0][0], (x >= 128).long())


def test_moving_mnist_options():
    ds = data.moving_mnist("train", num_sequences=7, num_frames=5, canvas_size=40, num_digits=3, seed=2)
    assert len(ds) == 7 and ds.shape == (5, 1, 40, 40) and ds[6][0].shape == (5, 1, 40, 40)
    with pytest.raises(ValueError, match="canvas_size"):
        data.moving_mnist(canvas_size=20)


def test_moving_mnist_motion_speed_and_bounds():
    digits = raw_mnist("test")
    src = MovingMnistSource(digits, "test", 0, 50, data.video.MovingMnistConfig(num_digits=1))
    steps, com_steps = [], []
    for i in range(50):
        clip, pos = src.clip_with_positions(i)
        assert clip.shape == (20, 1, 64, 64) and pos.shape == (20, 1, 2)
        assert (pos >= 0).all() and (pos <= 1).all()
        mass = clip.reshape(20, -1).astype(np.int64).sum(1)
        assert (mass == mass[0]).all()  # the whole digit is on the canvas in every frame
        d = np.linalg.norm(np.diff(pos[:, 0], axis=0), axis=1) * 36
        free = (pos[1:, 0] > 0).all(1) & (pos[1:, 0] < 1).all(1) & (pos[:-1, 0] > 0).all(1) & (pos[:-1, 0] < 1).all(1)
        steps.extend(d[free])
        ys, xs = np.mgrid[0:64, 0:64]
        w = clip[:, 0].astype(np.float64)
        com = np.stack([(w * ys).sum((1, 2)), (w * xs).sum((1, 2))], 1) / w.sum((1, 2))[:, None]
        com_steps.extend(np.linalg.norm(np.diff(com, axis=0), axis=1)[free])
    assert np.allclose(steps, 3.6)  # 0.1 of the 36 px free range per frame
    assert 3.2 < np.median(com_steps) < 4.0  # the same seen in the pixels (integer paste positions)


def test_trajectories_bounce_inside():
    pos = trajectories(np.random.default_rng(0), 200, 4, 0.37)
    assert pos.shape == (200, 4, 2) and pos.min() >= 0 and pos.max() <= 1
    wall = (pos[:-1] == 0) | (pos[:-1] == 1)
    assert wall.any()
    assert ((pos[1:] != pos[:-1]) | ~wall).all()  # a digit at a wall bounces off, never sticks
    inside = (pos[:-1] > 0) & (pos[:-1] < 1) & (pos[1:] > 0) & (pos[1:] < 1)
    d = np.linalg.norm(np.diff(pos, axis=0), axis=2)
    assert np.allclose(d[inside.all(2)], 0.37)


def test_clips_from_frames():
    frames = np.arange(10 * 4 * 4, dtype=np.uint8).reshape(10, 4, 4)
    clips = data.clips_from_frames(frames, 4, stride=3)
    assert clips.shape == (3, 4, 1, 4, 4) and np.array_equal(clips[1, 0, 0], frames[3])
    ds = data.clip_dataset(frames, 5)
    assert len(ds) == 2 and ds.shape == (5, 1, 4, 4) and ds.num_classes is None
    with pytest.raises(ValueError, match="at least"):
        data.clips_from_frames(frames, 11)


# ------------------------------------------------------------------------------------------------
# image files


def test_save_grid_and_image_io(tmp_path):
    x = torch.zeros(5, 1, 3, 3, dtype=torch.long)
    x[1] = 1
    path = data.save_grid(x, 2, tmp_path / "g.png", nrow=3)
    g = data.read_image(path)
    assert g.shape == (2 * 5 + 2, 3 * 5 + 2) and g.dtype == np.uint8
    assert g[2, 7] == 255 and g[2, 2] == 0  # item 1 is white, item 0 black
    rgb = torch.randint(0, 16, (4, 3, 5, 5))
    g = data.make_grid(rgb, 16, padding=0)
    assert g.shape == (10, 10, 3)
    assert np.array_equal(g[:5, 5:].transpose(2, 0, 1), (rgb[1].numpy() * 17).astype(np.uint8))
    vid = torch.randint(0, 256, (2, 6, 1, 4, 4))
    assert data.make_grid(vid, 256, padding=1).shape == (2 * 5 + 1, 6 * 5 + 1)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        data.save_grid(torch.full((1, 1, 2, 2), 2), 2, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="integer"):
        data.make_grid(torch.zeros(1, 1, 2, 2), 2)


def test_read_write_image(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    data.write_image(tmp_path / "a.png", a)
    assert np.array_equal(data.read_image(tmp_path / "a.png"), a)
    data.write_image(tmp_path / "g.png", a[..., :1])
    assert np.array_equal(data.read_image(tmp_path / "g.png"), a[..., 0])
    rgba = np.concatenate([a, np.full((7, 9, 1), 255, np.uint8)], axis=2)
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "o.png", rgba)
    assert np.array_equal(data.read_image(tmp_path / "o.png"), a)
    rgba[0, 0, 3] = 0
    iio.imwrite(tmp_path / "t.png", rgba)
    with pytest.raises(ValueError, match="transparent"):
        data.read_image(tmp_path / "t.png")
    with pytest.raises(ValueError, match="uint8"):
        data.write_image(tmp_path / "f.png", a.astype(np.float32))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # atomic writes leave nothing
