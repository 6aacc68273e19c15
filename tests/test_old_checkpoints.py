"""Checkpoints written by argen 0.1.0 (commit e8a4046, before contract v2) still load and give the
same log-likelihoods. Made by saving each registered model's tiny config, grey 4-level and RGB
256-level, with that release; `expected.json` holds a batch and its log_prob from that release
(computed after `torch.manual_seed(2)`)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import argen

DATA = Path(__file__).parent / "data" / "checkpoints-0.1.0"
EXPECTED = json.loads((DATA / "expected.json").read_text())


#: The models argen 0.1.0 registered (later families have no 0.1.0 checkpoints to load).
RELEASED_IN_0_1_0 = {"ardm", "gated_pixelcnn", "image_transformer", "lmconv", "pixelcnn", "pixelcnn_pp",
                     "pixelrnn_diag", "pixelrnn_row", "pixelsnail"}


def test_every_model_of_the_release_has_an_old_checkpoint():
    names = {tag.split("-")[0] for tag in EXPECTED}
    assert names == RELEASED_IN_0_1_0 and names <= set(argen.list_models())


@pytest.mark.parametrize("tag", sorted(EXPECTED))
def test_old_checkpoint_loads_with_identical_log_prob(tag):
    model = argen.load(DATA / tag).eval()
    rec = EXPECTED[tag]
    x = torch.tensor(rec["x"])
    torch.manual_seed(2)  # ARDM's log_prob is an ELBO estimate over random steps: the same draws as then
    with torch.no_grad():
        lp = model.log_prob(x)
    torch.testing.assert_close(lp, torch.tensor(rec["log_prob"], dtype=lp.dtype), rtol=1e-5, atol=1e-4)
