"""Latent video models: a video tokenizer + a video prior over its code volumes, as one video model.

Tensor level: `token_mask` over (T, H, W) cells; `LatentModel` over a video tokenizer has the clip
shapes, hands the prior the code volumes and exactly the code frames wholly inside the known frames,
pastes the context back, and its log_prob is per code position. CLI end to end on a slice of
moving-mnist-32-10f-binary: `argen train vqvae3d`, `argen tokenize` (code volumes cached uint16),
`argen train PRIOR --tokenizer RUN`, then `argen predict`, `sample`, `eval` and `fvd --features
moving-mnist` on the prior's run.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import argen
from argen.cli import main
from argen.data import load_dataset
from argen.models.latent.two_stage import LatentModel, token_mask
from argen.registry import tiny_kwargs
from argen.tokenizers import create_tokenizer, tiny_tokenizer_kwargs

DATA = "moving-mnist-32-10f-binary"
TOK = dict(hidden=8, res_blocks=1, heads=2, code_dim=4, codebook_size=16, downsample=(2, 8, 8))
PRIOR = "videogpt" if "videogpt" in argen.list_models() else "video_transformer"


def test_token_mask_over_clips():
    known = torch.zeros(2, 4, 4, 4, dtype=torch.bool)
    known[:, :3] = True  # frames 0..2 known: with 2 frames per code frame only code frame 0 is whole
    m = token_mask(known, (2, 2, 2))
    assert m.shape == (2, 2, 2, 2) and m[:, 0].all() and not m[:, 1].any()
    known[1, 0, 0, 0] = False  # one hidden pixel hides its whole cell
    m = token_mask(known, (2, 2, 2))
    assert not m[1, 0, 0, 0] and m[1, 0, 1].all() and m[0, 0].all()
    with pytest.raises(ValueError, match=r"divisible by the code grid \(3, 2, 2\), given \(4, 4, 4\)"):
        token_mask(known, (3, 2, 2))
    image = torch.ones(1, 4, 4, dtype=torch.bool)
    assert token_mask(image, (2, 2)).shape == (1, 2, 2)  # images as before


@pytest.fixture(scope="module")
def latent():
    torch.manual_seed(0)
    tok = create_tokenizer("vqvae3d", video_shape=(4, 1, 8, 8), levels=2, **tiny_tokenizer_kwargs("vqvae3d")).eval()
    prior = argen.create_model(PRIOR, video_shape=tok.prior_shape, levels=tok.codebook_size, **tiny_kwargs(PRIOR))
    return LatentModel(tok, prior.eval())


def test_latent_model_over_a_video_tokenizer(latent):
    tok = latent.tokenizer
    assert latent.data_shape == (4, 1, 8, 8) and latent.position_shape == (4, 8, 8)
    assert latent.code_shape == tok.code_shape == (2, 1, 4, 4) and latent.frame_stride == 2
    assert tuple(latent.prior.data_shape) == tok.prior_shape == tok.code_shape
    x = torch.randint(0, 2, (2, 4, 1, 8, 8))
    codes = latent.encode(x)
    assert codes.shape == (2, 2, 1, 4, 4) and torch.equal(latent.decode(codes), tok.decode(codes))
    assert latent.log_prob(x).shape == (2,) and latent.log_prob(x, reduce=False).shape == (2, 2, 4, 4)
    g = torch.Generator().manual_seed(0)
    s = latent.sample(2, generator=g)
    assert s.shape == (2, 4, 1, 8, 8) and s.dtype == torch.long and int(s.max()) <= 1
    with pytest.raises(ValueError, match=r"expected a prior over code grids \(2, 1, 4, 4\)"):
        LatentModel(tok, argen.create_model(PRIOR, video_shape=(2, 1, 2, 2), levels=16, **tiny_kwargs(PRIOR)))


@pytest.mark.parametrize("k, whole", [(3, 1), (2, 1), (1, 0)])
def test_predict_keeps_the_code_frames_inside_the_context(latent, monkeypatch, k, whole):
    x = torch.randint(0, 2, (2, 4, 1, 8, 8))
    seen = {}
    real = latent.prior.complete

    def spy(codes, known, *a, **kw):
        seen["codes"], seen["known"] = codes.clone(), known.clone()
        return real(codes, known, *a, **kw)

    monkeypatch.setattr(latent.prior, "complete", spy)
    out = latent.predict(x[:, :k], generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.equal(out[:, :k], x[:, :k])  # the context is pasted back
    assert seen["known"].shape == (2, 2, 4, 4)
    assert seen["known"][:, :whole].all() and not seen["known"][:, whole:].any()
    # the kept code frames are the true clip's: the tokenizer is temporally causal
    assert torch.equal(seen["codes"][:, :whole], latent.encode(x)[:, :whole])
    nats = latent.future_token_nats(x, k)
    assert nats["code_frames"] == [k // 2, 2] and nats["tokens"] == (2 - k // 2) * 16 and nats["bits_per_token"] > 0
    with pytest.raises(ValueError, match=r"expected context frames \(B, k, 1, 8, 8\) with 1 <= k < 4"):
        latent.predict(x)
    with pytest.raises(ValueError, match="expected context frames of dtype torch.long"):
        latent.predict(x[:, :k].float())


@torch.no_grad()
def _exact_future_nats(latent: LatentModel, x: torch.Tensor, first: int) -> torch.Tensor:
    """-log p(code frames >= first | code frames < first) by enumerating every future code volume."""
    codes = latent.encode(x)
    t, s, h, w = latent.prior.data_shape
    n = (t - first) * s * h * w
    values = torch.cartesian_prod(*[torch.arange(latent.prior.levels)] * n).reshape(-1, t - first, s, h, w)
    out = []
    for c in codes:
        every = torch.cat([c[None, :first].expand(len(values), -1, -1, -1, -1), values], 1)
        log_joint = latent.prior.log_prob(every)
        mine = latent.prior.log_prob(c[None])[0]
        out.append(torch.logsumexp(log_joint, 0) - mine)
    return torch.stack(out).double()


@pytest.mark.parametrize("prior_name, kw, conditional", [
    ("videogpt", dict(d_model=12, n_layers=2, n_heads=2, d_ff=24, zero_head=False), True),
    ("lvt", dict(d_model=16, n_layers=2, n_heads=2, d_ff=32, subscale=(2, 1, 1), block_shapes=(1, 2, 2)), True),
    ("lvt", dict(d_model=16, n_layers=2, n_heads=2, d_ff=32, subscale=(1, 2, 2), block_shapes=(2, 1, 1)), False),
])
def test_future_token_nats_is_the_conditional_exactly_when_it_says_so(prior_name, kw, conditional):
    """A frame-by-frame prior over a causal tokenizer: the reported nats are -log p(future | past) (by
    enumeration); a subscale order says it is not, and its sum indeed differs."""
    torch.manual_seed(2)  # a tokenizer whose untrained codes vary over these clips
    tok = create_tokenizer("vqvae3d", video_shape=(4, 1, 4, 4), levels=2,
                           **{**tiny_tokenizer_kwargs("vqvae3d"), "codebook_size": 2}).eval()
    prior = argen.create_model(prior_name, video_shape=tok.prior_shape, levels=2, **kw)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.3 * torch.randn_like(p))
    latent = LatentModel(tok, prior.eval())
    x = torch.randint(0, 2, (3, 4, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    rec = latent.future_token_nats(x, 2)
    assert rec["code_frames"] == [1, 2] and rec["conditional"] is conditional and rec["frame_major"] is conditional
    reported = rec["nats_per_token"] * rec["tokens"]
    exact = float(_exact_future_nats(latent, x, 1).mean())
    if conditional:
        assert reported == pytest.approx(exact, rel=1e-5, abs=1e-5)
    else:
        assert abs(reported - exact) > 1e-3
    with pytest.raises(ValueError, match="expected context k >= 1"):
        latent.future_token_nats(x, 2.0)  # type: ignore[arg-type]


def test_future_token_nats_flags_a_tokenizer_that_is_not_causal_in_time():
    tok = create_tokenizer("vqvae3d", video_shape=(4, 1, 8, 8), levels=2, causal=False,
                           **tiny_tokenizer_kwargs("vqvae3d")).eval()
    prior = argen.create_model(PRIOR, video_shape=tok.prior_shape, levels=tok.codebook_size, **tiny_kwargs(PRIOR))
    rec = LatentModel(tok, prior.eval()).future_token_nats(torch.randint(0, 2, (1, 4, 1, 8, 8)), 2)
    assert rec["frame_major"] and not rec["temporally_causal"] and not rec["conditional"]


@pytest.fixture(scope="module")
def clips_file(tmp_path_factory):
    """The first 40 clips of moving-mnist-32-10f-binary as an array file (36 train, 4 test clips)."""
    ds = load_dataset(DATA, "train")
    clips = np.stack([ds[i][0].numpy() for i in range(40)]).astype(np.uint8)
    path = tmp_path_factory.mktemp("mm") / "mm.npz"
    np.savez(path, images=clips, levels=np.int64(2))
    return path


def _sets(kw: dict) -> list[str]:
    out = []
    for k, v in kw.items():
        out += ["--set", f"model.{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}"]
    return out


def test_cli_tokenize_train_prior_predict_sample_eval_fvd(clips_file, tmp_path, capsys):
    data = f"npy:{clips_file}"
    tok, prior = tmp_path / "tok", tmp_path / "prior"
    common = ["--batch-size", "4", "--device", "cpu", "--set", "train.progress=false", "--set", "train.eval_examples=4"]
    assert main(["train", "vqvae3d", "--data", data, "--steps", "4", "--out", str(tok), *common, *_sets(TOK)]) == 0
    assert "ssim" in capsys.readouterr().out
    assert main(["tokenize", str(tok)]) == 0
    text = capsys.readouterr().out
    assert "36 code grids (5, 1, 4, 4)" in text and "4 code grids (5, 1, 4, 4)" in text
    cached = sorted((tok / "codes").glob("*.npz"))
    with np.load(cached[0]) as f:
        assert f["codes"].dtype == np.uint16 and f["codes"].shape[1:] == (5, 1, 4, 4)
    assert main(["train", PRIOR, "--tokenizer", str(tok), "--steps", "2", "--out", str(prior), *common,
                 *_sets(tiny_kwargs(PRIOR))]) == 0
    assert "bits/token" in capsys.readouterr().out
    model = argen.load(prior)
    assert isinstance(model, LatentModel) and model.data_shape == (10, 1, 32, 32) and model.frame_stride == 2

    js = tmp_path / "p.json"
    # 3 context frames, 2 frames per code frame: only code frame 1 (frames 1-2) conditions the likelihood
    assert main(["predict", str(prior), "--context", "3", "--frames", "6", "-n", "2", "-o", str(tmp_path / "p.gif"),
                 "--json", str(js), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "code frames 2..5 given code frame 1:" in text and "bits/token" in text and "note:" not in text
    record = json.loads(js.read_text())
    assert len(record["ssim"]) == 6 and record["likelihood"]["code_frames"] == [1, 5]
    assert record["likelihood"]["conditional"]
    assert record["likelihood"]["unit"] == "token" and record["likelihood"]["bits_per_token"] > 0

    assert main(["sample", str(prior), "-n", "2", "-o", str(tmp_path / "s.gif"), "--device", "cpu"]) == 0
    assert (tmp_path / "s.gif").is_file()
    capsys.readouterr()
    assert main(["eval", str(prior), "--device", "cpu"]) == 0
    assert "bits/token" in capsys.readouterr().out
    ev = json.loads((prior / "eval.json").read_text())
    assert ev["bits_per_token"] > 0 and "ssim" in ev["tokenizer_reconstruction"]
    assert main(["fvd", str(prior), "--features", "moving-mnist", "--n", "4", "--reference-n", "4", "--no-cache",
                 "--json", str(tmp_path / "f.json"), "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "f.json").read_text())["fvd_moving_mnist"] >= 0
