"""Video output: lossless GIFs of grey (and few-colour) clips, PNG strips, MP4 only with imageio-ffmpeg."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from argen.data import video_io
from argen.data.images import read_image
from argen.data.video_io import read_video, strip_path, video_frames, write_strip, write_video


def _expected(x: np.ndarray, levels: int) -> np.ndarray:
    return np.rint(x * (255 / (levels - 1))).astype(np.uint8)


@pytest.mark.parametrize("levels", [2, 4, 256])
def test_grey_gif_round_trips_exactly(tmp_path, levels):
    g = torch.Generator().manual_seed(levels)
    x = torch.randint(0, levels, (6, 1, 9, 7), generator=g)
    path = write_video(x, levels, tmp_path / "clip.gif")
    back = read_video(path)
    assert back.shape == (6, 9, 7, 3)
    for c in range(3):
        assert np.array_equal(back[..., c], _expected(x[:, 0].numpy(), levels))


def test_few_colour_gif_round_trips_and_batches_tile(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (3, 5, 3, 4, 6), generator=g)  # 3 clips, 5 frames, RGB, 4 levels: 64 colours
    back = read_video(write_video(x, 4, tmp_path / "b.gif"))
    assert back.shape == (5, 2 + 4 + 2, 2 + 3 * (6 + 2), 3)  # side by side, 2 px black borders
    for i in range(3):
        left = 2 + i * 8
        assert np.array_equal(back[:, 2:6, left:left + 6], _expected(x[i].numpy(), 4).transpose(0, 2, 3, 1))
    assert (back[:, :2] == 0).all() and (back[:, :, :2] == 0).all()
    grid = video_frames(x, 4, nrow=2)
    assert grid.shape == (5, 2 + 2 * 6, 2 + 2 * 8, 3)


def test_strip_has_a_row_per_clip_and_a_column_per_frame(tmp_path):
    x = torch.arange(2 * 3).view(2, 3, 1, 1, 1).expand(2, 3, 1, 4, 4) % 6
    strip = read_image(write_strip(x, 6, tmp_path / "s.png"))
    assert strip.shape == (2 + 2 * 6, 2 + 3 * 6)
    for clip in range(2):
        for frame in range(3):
            top, left = 2 + 6 * clip, 2 + 6 * frame
            assert (strip[top:top + 4, left:left + 4] == _expected(np.array(int(x[clip, frame, 0, 0, 0])), 6)).all()
    assert strip_path(tmp_path / "out.gif") == tmp_path / "out.png"
    with pytest.raises(ValueError, match=".png"):
        write_strip(x, 6, tmp_path / "s.gif")


def test_bad_inputs_and_paths(tmp_path):
    x = torch.zeros(3, 1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="expected a video file ending in .gif, .mp4, given suffix '.png'"):
        write_video(x, 2, tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"values must lie in \[0, 2\)"):
        write_video(x + 2, 2, tmp_path / "a.gif")
    with pytest.raises(ValueError, match=r"expected a clip \(T, C, H, W\)"):
        write_video(torch.zeros(4, 4, dtype=torch.long), 2, tmp_path / "a.gif")
    with pytest.raises(ValueError, match="fps"):
        write_video(x, 2, tmp_path / "a.gif", fps=0)
    assert list(tmp_path.iterdir()) == []


def test_mp4_needs_imageio_ffmpeg(tmp_path, monkeypatch):
    monkeypatch.setattr(video_io, "has_ffmpeg", lambda: False)
    with pytest.raises(ValueError, match="imageio-ffmpeg.*or write a .gif"):
        write_video(torch.zeros(3, 1, 4, 4, dtype=torch.long), 2, tmp_path / "a.mp4")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not video_io.has_ffmpeg(), reason="imageio-ffmpeg is not installed")
def test_mp4_when_ffmpeg_is_there(tmp_path):
    x = torch.randint(0, 2, (4, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    back = read_video(write_video(x, 2, tmp_path / "a.mp4"))
    assert back.shape[0] == 4 and back.shape[1:3] == (16, 16)


def test_write_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "v.gif"
    x = torch.randint(0, 2, (3, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    write_video(x, 2, out)
    first = out.read_bytes()
    from PIL import Image

    def broken(self, fp, *a, **k):
        Path(fp).write_bytes(b"half a gif")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        write_video((x + 1) % 2, 2, out)
    assert out.read_bytes() == first and sorted(p.name for p in tmp_path.iterdir()) == ["v.gif"]
