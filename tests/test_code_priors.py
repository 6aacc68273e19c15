"""Every registered model as a prior over a tokenizer's code grid (contract v2: data (1, h, w),
levels = the codebook size): the VQ-VAE + PixelCNN prior needs no model code, only the contract.

Models whose head takes more than 256 levels (read from the config's distribution, never from
names) run the conformance suite's causality, normalization and own-sampler == naive checks over
a (1, 5, 6) grid of 512 codes; models whose head cannot (logistic mixtures) refuse 512 levels
with a ValueError naming their limit.
"""
from __future__ import annotations

import pytest
import torch

import argen
from argen.models.base import PIXEL_LEVELS
from argen.positions import at, put
from argen.registry import build_config
from tests import test_conformance as conformance  # the module, so its tests are not collected twice here
from tests.helpers import lp, make_tiny, model_keys, random_images, split_key, tiny_shapes

CODES = 512
GRID = (1, 5, 6)


def max_levels(key: str) -> int:
    name, kw = split_key(key)
    return build_config(name, **kw).distribution_class().max_levels


PRIORS = [k for k in model_keys() if max_levels(k) > PIXEL_LEVELS]
PIXEL_ONLY = [k for k in model_keys() if max_levels(k) <= PIXEL_LEVELS]


def grid(key: str) -> tuple[int, int, int]:
    """(1, 5, 6), or the model's own one-channel conformance shape when it needs other sizes."""
    if make_tiny(key, GRID, CODES) is not None:
        return GRID
    return next(shape for shape, _ in tiny_shapes(key) if shape[0] == 1)


def test_categorical_models_are_code_priors():
    """The categorical pixel families and token_gpt take code grids (the list is read from the
    configs, this only guards against an empty selection); PixelSNAIL's head is a logistic mixture."""
    assert {"pixelcnn", "gated_pixelcnn", "image_transformer", "token_gpt"} <= set(PRIORS)
    assert {"pixelcnn_pp", "pixelsnail"} <= set(PIXEL_ONLY)


@pytest.mark.parametrize("key", PRIORS)
def test_prior_over_a_code_grid(key):
    shape = grid(key)
    model = make_tiny(key, shape, CODES)
    assert model is not None, f"{key} refuses a code grid {shape} with {CODES} levels"
    assert model.levels == CODES and model.data_shape == shape
    conformance.test_causality_pixels(key, shape, CODES)
    conformance.test_causality_subpixels(key, shape, CODES)
    conformance.test_earlier_pixels_matter(key, shape, CODES)
    # the suite's enumeration, at the middle position only: 512 codes per position make the
    # suite's three positions cost ~10 s for ARDM (one network call per position per example)
    order = model.generation_order()
    pos = order[len(order) // 2]
    x = random_images(model, 1).repeat(CODES, 1, 1, 1)
    put(x, pos, torch.arange(CODES)[:, None])
    total = torch.logsumexp(at(lp(model, x, reduce=False), pos).double(), 0)
    assert abs(float(total)) < 1e-4, f"code {pos} sums to exp({float(total)})"


@pytest.mark.parametrize("key", PRIORS)
def test_own_sampler_matches_naive_over_a_code_grid(key):
    conformance.test_own_sampler_matches_naive(key, grid(key), CODES)


@pytest.mark.parametrize("key", PIXEL_ONLY)
def test_pixel_only_heads_refuse_codebook_sizes(key):
    name, kw = split_key(key)
    limit = max_levels(key)
    with pytest.raises(ValueError, match=f"takes at most {limit} levels, given {CODES}"):
        argen.create_model(name, **{**kw, "image_shape": GRID, "levels": CODES})
