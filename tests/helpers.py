"""Shared helpers for tests: build any registered model in its tiny configuration."""
from __future__ import annotations

import torch

import argen
from argen.registry import get_entry, tiny_variants

# (channels, H, W, levels) tried in order; a model that cannot take a shape says so with ValueError.
SHAPES = [(1, 5, 6, 4), (3, 4, 4, 4)]
# the level extremes, run as well wherever they fit: binary data and 8-bit grey
EXTRA = [(1, 4, 4, 2), (1, 4, 4, 256)]
# video: (T, C, H, W, levels), tried in order like SHAPES
VIDEO_SHAPES = [(3, 1, 4, 4, 4), (2, 3, 4, 4, 4)]
VIDEO_FALLBACK = [(3, 1, 8, 8, 4), (2, 3, 8, 8, 4),
                  (2, 5, 3, 3, 3)]  # a code volume of 5 channels (hvqvae's top + 2x2 bottom codes)


def model_keys(modality: str = "image") -> list[str]:
    """Every registered model of `modality` ("image" or "video") and each of its tiny variants:
    "name" or "name:variant"."""
    return [name if not v else f"{name}:{v}" for name in argen.list_models()
            if get_entry(name).modality == modality for v in tiny_variants(name)]


def split_key(key: str) -> tuple[str, dict]:
    name, _, variant = key.partition(":")
    return name, tiny_variants(name)[variant]


def make_tiny(key: str, image_shape: tuple[int, ...], levels: int, **extra) -> argen.models.ARModel | None:
    """The model ("name" or "name:variant") in its tiny config at this shape, or None when it rejects the shape.

    A 4-tuple shape (T, C, H, W) is a video model's `video_shape`.
    """
    name, kw = split_key(key)
    kw.update(extra)
    kw["video_shape" if len(image_shape) == 4 else "image_shape"] = image_shape
    kw["levels"] = levels
    try:
        model = argen.create_model(name, **kw)
    except ValueError:
        return None
    return model.eval()


def tiny_shapes(key: str) -> list[tuple[tuple[int, int, int], int]]:
    """Shapes the conformance suite runs a model at (its own, if the defaults do not fit)."""
    shapes = [((c, h, w), lv) for c, h, w, lv in SHAPES]
    fitting = [s for s in shapes if make_tiny(key, *s) is not None]
    if not fitting:  # e.g. models that need sizes divisible by 4
        fitting = [((1, 8, 8), 4), ((3, 8, 8), 4)]
        fitting = [s for s in fitting if make_tiny(key, *s) is not None]
    assert fitting, f"{key} accepts none of the conformance shapes"
    return fitting + [((c, h, w), lv) for c, h, w, lv in EXTRA if make_tiny(key, (c, h, w), lv) is not None]


def tiny_video_shapes(key: str) -> list[tuple[tuple[int, int, int, int], int]]:
    """Video shapes ((T, C, H, W), levels) the video conformance suite runs a model at."""
    for table in (VIDEO_SHAPES, VIDEO_FALLBACK):
        fitting = [((t, c, h, w), lv) for t, c, h, w, lv in table if make_tiny(key, (t, c, h, w), lv) is not None]
        if fitting:
            return fitting
    raise AssertionError(f"{key} accepts none of the video conformance shapes")


def random_images(model, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.levels, (batch, *model.data_shape), generator=g)


def random_cond(model, batch: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
    """A random `cond` of the kind the model declares (`model.cond_spec`), so the suites check
    conditioned models conditioned: tokens -> ids in [2, vocab) (past PAD = 0 and NULL = 1) of
    the longest length, each row with a random amount (possibly none) of trailing padding, at least
    one real token; class -> labels in [0, num_classes); frames / image -> random values in range;
    none -> None."""
    spec = model.cond_spec
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    if spec.kind == "none":
        return None
    if spec.kind == "class":
        return torch.randint(0, spec.num_classes, (batch,), generator=g)
    if spec.kind == "tokens":
        length = spec.max_len or 8
        ids = torch.randint(2, max(spec.vocab_size, 3), (batch, length), generator=g).clamp(max=spec.vocab_size - 1)
        real = torch.randint(1, length + 1, (batch,), generator=g)  # tokens kept per row
        return ids.masked_fill(torch.arange(length)[None, :] >= real[:, None], 0)
    if spec.kind == "frames":
        shape = spec.frame_shape or tuple(model.data_shape[-3:])
        return torch.randint(0, spec.levels or model.levels, (batch, spec.frames, *shape), generator=g)
    if spec.kind == "image":
        return torch.randint(0, spec.levels, (batch, *spec.image_shape), generator=g)
    raise AssertionError(f"random_cond: no rule for cond kind {spec.kind!r}")


def order_kwargs(model) -> dict:
    """Models that generate in a chosen order (LMConv, ARDM) take `order=`; the suite passes the
    model's own `generation_order()`, so causality is checked over that order."""
    import inspect

    if "order" in inspect.signature(model.log_prob).parameters:
        return {"order": model.generation_order()}
    return {}


def lp(model, x, cond=None, reduce=True):
    """log_prob under the model's own order (exact for that order)."""
    with torch.no_grad():
        return model.log_prob(x, cond, reduce=reduce, **order_kwargs(model))


def cond_table(model, x, cond=None):
    with torch.no_grad():
        return model.conditionals(x, cond, **order_kwargs(model))
