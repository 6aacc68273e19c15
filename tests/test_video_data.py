"""Video data: Moving MNIST views by name, mnist_test_seq.npy, BAIR layouts, folders of video files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from argen.data import list_datasets, load_dataset
from argen.data.images import write_image
from argen.data.video import area_downscale
from argen.data.video_io import write_video


# ----- Moving MNIST views -----------------------------------------------------------------------
def test_moving_mnist_frames_size_and_levels_compose():
    full = load_dataset("moving-mnist", "test")
    ds = load_dataset("moving-mnist-32-10f-binary", "test")
    assert (ds.shape, ds.levels, len(ds), ds.name) == ((10, 1, 32, 32), 2, 1000, "moving-mnist-32-10f-binary")
    x = full[3][0].numpy().astype(np.int64)
    small = x[:10].reshape(10, 1, 32, 2, 32, 2).sum((3, 5))  # 2x2 blocks, computed here independently
    expect = (np.floor(small / 4 + 0.5) >= 128).astype(np.int64)
    assert np.array_equal(ds[3][0].numpy(), expect)
    four = load_dataset("moving-mnist-32-10f-2bit", "test")
    assert four.levels == 4 and int(four[3][0].max()) == 3
    frames = load_dataset("moving-mnist-10f", "train")
    assert frames.shape == (10, 1, 64, 64)
    assert torch.equal(frames[5][0], load_dataset("moving-mnist", "train")[5][0][:10])  # the first 10 frames
    assert torch.equal(ds[3][0], load_dataset("moving-mnist-32-10f-binary", "test")[3][0])  # pure function of index
    assert not torch.equal(ds[3][0], load_dataset("moving-mnist-32-10f-binary", "test", seed=1)[3][0])


def test_clip_options_are_checked():
    with pytest.raises(ValueError, match="come right after the base"):
        load_dataset("moving-mnist-binary-32")
    with pytest.raises(ValueError, match="1 <= frames <= 20"):
        load_dataset("moving-mnist-30f")
    with pytest.raises(ValueError, match="multiple of 48"):
        load_dataset("moving-mnist-48")
    with pytest.raises(ValueError, match="for video data"):
        load_dataset("mnist-14")
    with pytest.raises(ValueError, match="at most one"):
        load_dataset("moving-mnist-10f-5f")


def test_area_downscale_rounds_half_up():
    x = np.array([[[0, 1], [0, 1]], [[1, 1], [1, 2]]], dtype=np.uint8).reshape(2, 2, 2)  # block means 0.5, 1.25
    assert area_downscale(x, 2).reshape(-1).tolist() == [1, 1]
    with pytest.raises(ValueError, match="divide"):
        area_downscale(np.zeros((3, 3), np.uint8), 2)


def test_datasets_lists_the_video_names(capsys):
    names = {d.name: d for d in list_datasets()}
    for name in ("moving-mnist-10f", "moving-mnist-32", "moving-mnist-32-10f-binary", "mnist-test-seq", "bair:PATH",
                 "video-folder:PATH"):
        assert name in names, name
    assert names["moving-mnist-32-10f-binary"].shape == (10, 1, 32, 32)
    from argen.cli import main

    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "moving-mnist-32-10f-binary" in out and "10x1x32x32" in out and "bair:PATH" in out


# ----- mnist_test_seq.npy ----------------------------------------------------------------------------
def test_mnist_test_seq_layout_and_split(tmp_path):
    rng = np.random.default_rng(0)
    seq = rng.integers(0, 256, (20, 30, 8, 8)).astype(np.uint8)  # (T, N, H, W) as the canonical file
    np.save(tmp_path / "mnist_test_seq.npy", seq)
    train = load_dataset(f"mnist-test-seq:{tmp_path / 'mnist_test_seq.npy'}", "train")
    test = load_dataset("mnist-test-seq", "test", root=str(tmp_path))  # --data-root: the folder holding the file
    assert (len(train), len(test), train.shape, train.levels) == (27, 3, (20, 1, 8, 8), 256)
    assert np.array_equal(train[4][0].numpy()[:, 0], seq[:, 4])  # item i = sequence i, time first
    assert np.array_equal(test[0][0].numpy()[:, 0], seq[:, 27])  # the last 10% are test
    assert len(load_dataset(f"mnist-test-seq:{tmp_path / 'mnist_test_seq.npy'}", "all")) == 30
    small = load_dataset(f"mnist-test-seq:{tmp_path / 'mnist_test_seq.npy'}-4-10f-binary", "test")
    assert small.shape == (10, 1, 4, 4) and small.levels == 2
    np.save(tmp_path / "bad.npy", seq.astype(np.int16))
    with pytest.raises(ValueError, match=r"expected uint8 \(T, N, H, W\).*given int16"):
        load_dataset(f"mnist-test-seq:{tmp_path / 'bad.npy'}")
    with pytest.raises(FileNotFoundError, match="mnist_test_seq.npy"):
        load_dataset("mnist-test-seq", "test", root=str(tmp_path / "nowhere"))


# ----- BAIR --------------------------------------------------------------------------------------------
def _clips(n=10, t=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, t, 8, 8, 3)).astype(np.uint8)  # (N, T, H, W, 3)


def test_bair_array_files(tmp_path):
    clips = _clips()
    np.save(tmp_path / "bair.npy", clips)
    ds = load_dataset(f"bair:{tmp_path / 'bair.npy'}", "train")
    assert (len(ds), ds.shape, ds.levels) == (9, (4, 3, 8, 8), 256)
    assert np.array_equal(ds[2][0].numpy(), clips[2].transpose(0, 3, 1, 2))
    test = load_dataset(f"bair:{tmp_path / 'bair.npy'}", "test")
    assert len(test) == 1 and np.array_equal(test[0][0].numpy(), clips[9].transpose(0, 3, 1, 2))
    np.savez(tmp_path / "bair.npz", videos=clips.transpose(0, 1, 4, 2, 3))  # (N, T, 3, H, W) in an .npz
    z = load_dataset(f"bair:{tmp_path / 'bair.npz'}", "all")
    assert len(z) == 10 and np.array_equal(z[7][0].numpy(), clips[7].transpose(0, 3, 1, 2))
    assert load_dataset(f"bair:{tmp_path / 'bair.npy'}-2f", "all").shape == (2, 3, 8, 8)
    np.save(tmp_path / "flat.npy", clips[:, 0])
    with pytest.raises(ValueError, match="expected clips"):
        load_dataset(f"bair:{tmp_path / 'flat.npy'}", "all")


def test_bair_trajectory_folders(tmp_path):
    clips = _clips(n=3, t=3, seed=1)
    for split, idx in (("train", [0, 1]), ("test", [2])):
        for i in idx:
            traj = tmp_path / "bair" / split / f"traj_{i:04d}"
            traj.mkdir(parents=True)
            for t in range(3):  # 0.png .. 2.png; 10.png would sort after 2.png numerically
                write_image(traj / f"{t}.png", clips[i, t])
    train = load_dataset(f"bair:{tmp_path / 'bair'}", "train")
    test = load_dataset(f"bair:{tmp_path / 'bair'}", "test")
    assert (len(train), len(test), train.shape) == (2, 1, (3, 3, 8, 8))
    assert np.array_equal(train[1][0].numpy(), clips[1].transpose(0, 3, 1, 2))
    assert np.array_equal(test[0][0].numpy(), clips[2].transpose(0, 3, 1, 2))
    assert len(load_dataset(f"bair:{tmp_path / 'bair'}", "all")) == 3
    # without train/ and test/: the positional split
    flat = load_dataset(f"bair:{tmp_path / 'bair' / 'train'}", "all")
    assert len(flat) == 2 and np.array_equal(flat[0][0].numpy(), clips[0].transpose(0, 3, 1, 2))
    # numeric frame order: 0, 1, 2, ..., 10
    many = tmp_path / "many" / "t0"
    many.mkdir(parents=True)
    for t in range(12):
        write_image(many / f"{t}.png", np.full((4, 4), 10 * t, dtype=np.uint8))
    m = load_dataset(f"bair:{tmp_path / 'many'}", "all")[0][0]
    assert m.shape == (12, 1, 4, 4) and [int(v) for v in m[:, 0, 0, 0]] == [10 * t for t in range(12)]
    (tmp_path / "many" / "t1").mkdir()
    write_image(tmp_path / "many" / "t1" / "0.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="one number of frames"):
        load_dataset(f"bair:{tmp_path / 'many'}", "all")


# ----- folders of video files ----------------------------------------------------------------------------
def test_video_folder_cuts_clips(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    rng = np.random.default_rng(2)
    a = rng.integers(0, 4, (7, 1, 6, 6))
    b = rng.integers(0, 4, (9, 1, 6, 6))
    write_video(a, 4, folder / "a.gif")
    write_video(b, 4, folder / "b.gif")
    ds = load_dataset(f"video-folder:{folder}-3f", "all")
    assert (len(ds), ds.shape) == (2 + 3, (3, 1, 6, 6))  # 7 frames -> 2 clips, 9 -> 3
    scaled = lambda v: np.rint(v * 85).astype(np.int64)  # noqa: E731 - 4 levels written as 0, 85, 170, 255
    assert np.array_equal(ds[1][0].numpy(), scaled(a[3:6]))
    assert np.array_equal(ds[4][0].numpy(), scaled(b[6:9]))
    with pytest.raises(ValueError, match="no file has 16 frames"):
        load_dataset(f"video-folder:{folder}", "all")  # default clip length 16
    write_video(rng.integers(0, 4, (3, 3, 5, 5)), 4, folder / "c.gif")
    with pytest.raises(ValueError, match="one frame size"):
        load_dataset(f"video-folder:{folder}-3f", "all")
