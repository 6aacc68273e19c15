"""Video files for the CLI: clips as GIF (or MP4) and as a PNG strip of frames.

Model data is integer levels in [0, levels); files hold 0..255 (`argen.data.images.to_uint8`).

- `write_video(x, levels, path)`: x (T, C, H, W), or a batch (B, T, C, H, W) tiled frame by frame
  (side by side by default, `nrow` clips per row). `.gif` is written with Pillow through an exact
  palette whenever the clip has at most 256 distinct colours, which every grey clip has (any
  levels <= 256), so a GIF of grey or few-level colour data reads back bit for bit; a colour clip
  with more colours is quantized by Pillow (lossy; use the PNG strip for exact values). GIF stores
  identical consecutive frames once, with their durations summed. `.mp4` needs the optional
  `imageio-ffmpeg` (`pip install argen[video]`); H.264 is lossy.
- `write_strip(x, levels, path)`: one PNG, a row per clip and a column per frame (lossless).

Writes are atomic (`argen.fileio.atomic_write`): an interrupted run never leaves half a file.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from torch import Tensor

from argen.data.images import make_grid, save_grid, to_uint8
from argen.fileio import atomic_write

VIDEO_SUFFIXES = (".gif", ".mp4")
DEFAULT_FPS = 4.0


def _as_batch(x: Tensor | np.ndarray, levels: int) -> np.ndarray:
    """(T, C, H, W) or (B, T, C, H, W) integer levels -> uint8 (B, T, C, H, W) in 0..255."""
    a = to_uint8(x, levels)
    if a.ndim == 4:
        a = a[None]
    if a.ndim != 5 or a.shape[2] not in (1, 3) or 0 in a.shape[:2]:
        raise ValueError(f"expected a clip (T, C, H, W) or clips (B, T, C, H, W) with C in (1, 3) and B, T >= 1, "
                         f"given shape {tuple(np.shape(x))}")
    return a


def video_frames(x: Tensor | np.ndarray, levels: int, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """The frames a video file shows: uint8 (T, H', W') grey or (T, H', W', 3), the clips of a batch
    tiled `nrow` per row (default: all side by side) with `padding` black pixels between them."""
    a = _as_batch(x, levels)
    b, t = a.shape[:2]
    if b == 1 and padding == 0:
        frames = a[0]
        return frames[:, 0] if frames.shape[1] == 1 else frames.transpose(0, 2, 3, 1)
    return np.stack([make_grid(a[:, i], 256, nrow=nrow or b, padding=padding) for i in range(t)])


def has_ffmpeg() -> bool:
    """True when imageio's ffmpeg backend (the package imageio-ffmpeg) is installed."""
    return importlib.util.find_spec("imageio_ffmpeg") is not None


def check_video_path(path: str | Path, option: str = "-o") -> Path:
    """Raise ValueError unless `path` ends in a video suffix this machine can write."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"{option} {str(path)!r}: expected a video file ending in {', '.join(VIDEO_SUFFIXES)}, "
                         f"given suffix {path.suffix or '(none)'!r}")
    if suffix == ".mp4" and not has_ffmpeg():
        raise ValueError(f"{option} {str(path)!r}: writing .mp4 needs the package imageio-ffmpeg "
                         "(`pip install imageio-ffmpeg`, or `pip install argen[video]`); or write a .gif")
    return path


def _palette_image(frame: np.ndarray, lookup: dict[bytes, int] | None, palette: list[int] | None):  # noqa: ANN202
    from PIL import Image

    rgb = frame if frame.ndim == 3 else np.repeat(frame[..., None], 3, axis=2)
    if lookup is None:  # more than 256 colours: Pillow's quantizer (lossy)
        return Image.fromarray(rgb, "RGB").quantize(256)
    flat = np.ascontiguousarray(rgb).reshape(-1, 3)
    keys = flat.view(np.dtype((np.void, 3)))[:, 0]
    index = np.fromiter((lookup[k.tobytes()] for k in keys), dtype=np.uint8, count=len(keys))
    im = Image.fromarray(index.reshape(rgb.shape[:2]), "P")
    im.putpalette(palette)
    return im


def _write_gif(frames: np.ndarray, path: Path, fps: float) -> None:
    rgb = frames if frames.ndim == 4 else np.repeat(frames[..., None], 3, axis=3)
    colours = np.unique(rgb.reshape(-1, 3), axis=0)
    lookup = palette = None
    if len(colours) <= 256:
        lookup = {c.tobytes(): i for i, c in enumerate(colours)}
        palette = colours.reshape(-1).tolist() + [0] * (3 * (256 - len(colours)))
    images = [_palette_image(f, lookup, palette) for f in frames]
    duration = int(round(1000 / fps))
    atomic_write(path, lambda tmp: images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                                                  duration=duration, loop=0, optimize=False, disposal=1),
                 suffix=".gif")


def _write_mp4(frames: np.ndarray, path: Path, fps: float) -> None:
    import imageio.v3 as iio

    rgb = frames if frames.ndim == 4 else np.repeat(frames[..., None], 3, axis=3)
    t, h, w, _ = rgb.shape
    ph, pw = -h % 16, -w % 16  # H.264 wants sizes in macro blocks: pad with black instead of resampling
    rgb = np.pad(rgb, ((0, 0), (0, ph), (0, pw), (0, 0)))
    atomic_write(path, lambda tmp: iio.imwrite(tmp, rgb, extension=".mp4", plugin="FFMPEG", fps=fps,
                                               codec="libx264", macro_block_size=16), suffix=".mp4")


def write_video(x: Tensor | np.ndarray, levels: int, path: str | Path, *, fps: float = DEFAULT_FPS,
                nrow: int | None = None, padding: int = 2) -> Path:
    """Write a clip (T, C, H, W) or a batch of clips (B, T, C, H, W), tiled, as .gif or .mp4; returns the path.

    A single clip is written without a border; a batch gets `padding` black pixels between clips.
    """
    path = check_video_path(path, "path")
    if not (isinstance(fps, (int, float)) and 0 < fps <= 100):
        raise ValueError(f"fps must be a number in (0, 100], given {fps!r}")
    single = np.ndim(x) == 4
    frames = video_frames(x, levels, nrow=nrow, padding=0 if single else padding)
    (_write_gif if path.suffix.lower() == ".gif" else _write_mp4)(frames, path, float(fps))
    return path


def write_strip(x: Tensor | np.ndarray, levels: int, path: str | Path, padding: int = 2) -> Path:
    """A PNG of frames: one row per clip of (B, T, C, H, W) (or one row for (T, C, H, W)), frames left to right."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"expected a .png path for the strip of frames, given {str(path)!r}")
    a = _as_batch(x, levels)
    return save_grid(a, 256, path, padding=padding)


def strip_path(video_path: str | Path) -> Path:
    """Where the PNG strip beside a video file goes: out.gif -> out.png."""
    return Path(video_path).with_suffix(".png")


def read_video(path: str | Path) -> np.ndarray:
    """Frames of a video file as uint8 (T, H, W, 3) (for checks and tests)."""
    from argen.data.readers import read_video_file

    return read_video_file(path)
