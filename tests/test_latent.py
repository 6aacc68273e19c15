"""Two-stage latent models: code grids cached per tokenizer, the composition of a tokenizer and a
prior behind the model contract over images, and the CLI from tokenizer to samples."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import argen
from argen.checkpoint import weights_fingerprint
from argen.cli import main
from argen.data.codes import code_dataset, codes_path, read_codes
from argen.data.dataset import ArgenDataset, ArraySource
from argen.models.latent import LatentModel, token_mask
from argen.registry import tiny_kwargs
from argen.tokenizers import create_tokenizer, tiny_tokenizer_kwargs


def tokenizer(name: str = "vqvae", seed: int = 0, shape=(1, 8, 8), levels: int = 4):
    torch.manual_seed(seed)
    return create_tokenizer(name, image_shape=shape, levels=levels, **tiny_tokenizer_kwargs(name)).eval()


def prior_for(tok, name: str = "pixelcnn", num_classes=None, seed: int = 0):
    torch.manual_seed(seed)
    return argen.create_model(name, image_shape=(1, *tok.code_shape), levels=tok.codebook_size,
                              num_classes=num_classes, **tiny_kwargs(name)).eval()


def images(n: int = 6, shape=(1, 8, 8), levels: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, levels, (n, *shape), generator=torch.Generator().manual_seed(seed))


# ----- the composition ------------------------------------------------------------------------------
def test_token_mask_keeps_only_wholly_known_cells():
    known = torch.ones(1, 4, 4, dtype=torch.bool)
    known[0, 0, 3] = False  # one pixel of the top-right 2x2 cell
    assert token_mask(known, (2, 2)).tolist() == [[[True, False], [True, True]]]
    with pytest.raises(ValueError, match="divisible"):
        token_mask(torch.ones(1, 5, 4, dtype=torch.bool), (2, 2))


def test_latent_model_composes_the_contract_over_images():
    tok = tokenizer()
    prior = prior_for(tok, "gated_pixelcnn")
    model = LatentModel(tok, prior)
    assert model.data_shape == (1, 8, 8) and model.levels == 4 and not model.exact_likelihood
    assert model.num_dims == tok.num_tokens  # bits/dim of a latent model is bits per token
    x = images()
    lp = model.log_prob(x)
    assert torch.allclose(lp, prior.log_prob(tok.encode(x).unsqueeze(1)))
    assert model.log_prob(x, reduce=False).shape == (6, *tok.code_shape)
    g = torch.Generator().manual_seed(0)
    s = model.sample(3, generator=g)
    assert s.shape == (3, 1, 8, 8) and s.dtype == torch.long and 0 <= int(s.min()) and int(s.max()) < 4
    # sampling is the prior's draw, decoded
    codes = prior.sample(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, tok.decode(codes[:, 0]))


def test_latent_completion_keeps_known_pixels_and_known_codes():
    tok = tokenizer()
    model = LatentModel(tok, prior_for(tok))
    x = images(4)
    known = torch.zeros(8, 8, dtype=torch.bool)
    known[4:] = True  # bottom half known: the bottom row of codes (cells of 2x2 pixels) is kept
    out = model.complete(x, known, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[:, :, 4:], x[:, :, 4:])
    filled_codes = tok.encode(torch.where(known, x, out))
    # the decoded hidden part comes from codes that agree with x's on the known cells
    hidden_out = out[:, :, :4]
    assert hidden_out.shape == (4, 1, 4, 8) and int(hidden_out.max()) < 4
    assert filled_codes.shape == (4, *tok.code_shape)
    with pytest.raises(ValueError, match="known"):
        model.complete(x, known.long())


def test_latent_model_refuses_a_prior_of_another_grid():
    tok = tokenizer()
    wrong = argen.create_model("pixelcnn", image_shape=(1, 5, 5), levels=tok.codebook_size, **tiny_kwargs("pixelcnn"))
    with pytest.raises(ValueError, match="code grids"):
        LatentModel(tok, wrong)
    with pytest.raises(ValueError, match="tokenizer"):
        LatentModel(prior_for(tok), prior_for(tok))


# ----- code grids cached per tokenizer --------------------------------------------------------------
def test_code_dataset_is_cached_and_refreshed_when_the_weights_change(tmp_path, monkeypatch):
    import argen.data as data_mod

    items = ArgenDataset("toy", ArraySource(images(10).numpy().astype(np.uint8), np.arange(10) % 3, levels=4))
    monkeypatch.setattr(data_mod, "load_dataset", lambda name, split, root=None, seed=0: items)
    tok = tokenizer()
    ds, made = code_dataset(tok, tmp_path, "toy", "train", progress=False)
    assert made and len(ds) == 10 and ds.shape == (1, *tok.code_shape) and ds.levels == tok.codebook_size
    x0, y0 = ds[3]
    assert x0.dtype == torch.long and torch.equal(x0[0], tok.encode(items[3][0][None])[0]) and int(y0) == 0
    assert ds.num_classes == 3
    again, made = code_dataset(tok, tmp_path, "toy", "train", progress=False)
    assert not made and torch.equal(again[3][0], x0)
    other = tokenizer(seed=1)
    assert read_codes(codes_path(tmp_path, "toy", "train"), weights_fingerprint(other)) is None
    _, made = code_dataset(other, tmp_path, "toy", "train", progress=False)
    assert made  # other weights: encoded again, never the stale cache
    # other items (a seed of random views, a data root, a name that slugs alike): never the cache either
    _, made = code_dataset(tok, tmp_path, "toy", "train", seed=1, progress=False)
    assert made
    assert codes_path(tmp_path, "npy:/a/b.npy", "train") != codes_path(tmp_path, "npy:/a_b.npy", "train")
    assert codes_path(tmp_path, "toy", "train", root="/x") != codes_path(tmp_path, "toy", "train", root="/y")


# ----- the CLI, end to end on the embedded MNIST -----------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    tok, prior = root / "tok", root / "prior"
    quick = ["--set", "train.eval_examples=64", "train.log_every=1"]
    assert main(["train", "vqvae", "--data", "mnist", "--steps", "4", "--batch-size", "16", "--out", str(tok),
                 *quick]) == 0
    return root, tok, prior, quick


def test_cli_tokenizer_run_records_reconstruction_metrics(runs, capsys):
    _, tok, _, _ = runs
    desc = json.loads((tok / "config.json").read_text())
    assert desc["kind"] == "tokenizer" and desc["model"] == "vqvae"
    assert {"test_psnr", "test_mse", "test_usage"} <= set(desc["metrics"])
    records = [json.loads(line) for line in (tok / "metrics.jsonl").read_text().splitlines()]
    assert any("train_rec_mse" in r or "train_loss" in r for r in records)
    assert main(["eval", str(tok), "--max-examples", "32"]) == 0
    assert "PSNR" in capsys.readouterr().out
    assert json.loads((tok / "eval.json").read_text())["reconstruction"]["n"] == 32
    assert main(["sample", str(tok), "-n", "2", "-o", str(tok / "x.png")]) == 2  # a tokenizer draws no samples


def test_cli_two_stage_from_tokenize_to_samples(runs, capsys):
    root, tok, prior, quick = runs
    assert main(["tokenize", str(tok)]) == 0
    out = capsys.readouterr().out
    assert "9000 code grids (1, 7, 7)" in out and "codes used" in out
    assert codes_path(tok, "mnist", "train").is_file() and codes_path(tok, "mnist", "test").is_file()
    assert main(["train", "token_gpt", "--tokenizer", str(tok), "--out", str(prior), "--steps", "3", "--batch-size",
                 "16", "--class-conditional", *quick]) == 0
    out = capsys.readouterr().out
    assert "encoded" not in out  # the cached codes were reused
    desc = json.loads((prior / "config.json").read_text())
    assert desc["tokenizer"]["dir"] == "tokenizer" and desc["data"] == "mnist"
    assert desc["config"]["image_shape"] == [1, 7, 7] and desc["config"]["levels"] == 128
    assert (prior / "tokenizer" / "config.json").is_file()
    model = argen.load(prior)
    assert isinstance(model, LatentModel) and model.data_shape == (1, 28, 28)
    assert weights_fingerprint(model.tokenizer) == desc["tokenizer"]["fingerprint"]
    assert argen.load(prior, compose=False).data_shape == (1, 1, 7, 7)[1:]

    grid = root / "grid.png"
    assert main(["sample", str(prior), "-n", "4", "-o", str(grid), "--class", "3", "--cfg", "2.0", "--top-k", "20"]) == 0
    assert grid.is_file()
    assert main(["complete", str(prior), "--mask", "top-half", "-n", "2", "-o", str(root / "c.png")]) == 0
    assert main(["eval", str(prior), "--max-examples", "16"]) == 0
    out = capsys.readouterr().out
    assert "bits/token" in out and "tokenizer: PSNR" in out
    record = json.loads((prior / "eval.json").read_text())
    assert record["tokens"] == 49 and "psnr" in record["tokenizer_reconstruction"]
    # a two-stage model codes no pixels losslessly
    assert main(["compress", str(prior), str(grid), "-o", str(root / "x.argz")]) == 2


def test_cli_prior_resumes_over_its_own_tokenizer_copy(runs):
    root, tok, prior, quick = runs
    run = root / "prior2"
    base = ["train", "pixelcnn", "--tokenizer", str(tok), "--out", str(run), "--batch-size", "8", *quick]
    assert main([*base, "--steps", "2"]) == 0
    assert main(["train", "pixelcnn", "--out", str(run), "--steps", "3", "--resume", *quick]) == 0
    assert json.loads((run / "config.json").read_text())["step"] == 3
    # other tokenizer weights: refused on resume
    other = root / "tok-other"
    assert main(["train", "fsq", "--data", "mnist", "--steps", "1", "--batch-size", "8", "--out", str(other), *quick]) == 0
    assert main([*base, "--steps", "4", "--resume", "--tokenizer", str(other)]) == 2
    assert main(["train", "vqvae", "--tokenizer", str(tok), "--out", str(root / "bad")]) == 2
    assert main(["train", "pixelcnn", "--tokenizer", str(run), "--out", str(root / "bad2")]) == 2
