"""Data with conditions: caption vocabulary, captioned digits (held-out compositions), edge maps,
the "image" condition kind, and conditions carried into code datasets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from argen.conditioning import CondSpec
from argen.data import load_dataset
from argen.data.captions import CAPTION_LEN, COLOR_PAIRS, HELD_OUT, PALETTE, caption_for, vocabulary
from argen.data.edges import edge_map
from argen.text import NULL, PAD, Vocabulary


def test_vocabulary_encode_batch_decode_and_errors():
    v = Vocabulary(["a", "red", "two"])
    assert v.size == 5 and v.encode("A  red, two") == [2, 3, 4]
    b = v.batch(["a red two", "two"], 4)
    assert b.tolist() == [[2, 3, 4, PAD], [4, PAD, PAD, PAD]]
    assert v.decode(b[1]) == "two" and v.decode(v.null(1, 3)[0]) == "<null>"
    assert v.null(2, 3).tolist() == [[NULL, PAD, PAD]] * 2
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['blue'\].*known words are: a, red, two"):
        v.encode("a blue two")
    with pytest.raises(ValueError, match="at most 2 words"):
        v.batch(["a red two"], 2)
    with pytest.raises(ValueError, match="at least one word"):
        v.encode("  ")
    assert Vocabulary.from_dict(v.to_dict()) == v
    with pytest.raises(ValueError, match="vocabulary record"):
        Vocabulary.from_dict({"words": "a"})


def test_captions_splits_hold_out_compositions_and_are_fixed():
    train = load_dataset("mnist-captions", "train")
    novel = load_dataset("mnist-captions", "test-novel")
    test = load_dataset("mnist-captions", "test", seed=3)  # the seed never changes a split
    assert (len(train), len(test), len(novel)) == (9000, 1000, 1000)
    assert train.cond_spec == CondSpec.tokens(vocabulary().size, CAPTION_LEN) and train.num_classes is None
    seen = {train.source.composition(i) for i in range(len(train))}
    assert not seen & HELD_OUT and len(HELD_OUT) == 30
    assert all(novel.source.composition(i) in HELD_OUT for i in range(len(novel)))
    assert all(test.source.composition(i) not in HELD_OUT for i in range(len(test)))
    # every digit and every colour pair is seen in training (generalisation is compositional)
    assert {d for d, _, _ in seen} == set(range(10)) and {(f, b) for _, f, b in seen} == set(COLOR_PAIRS)
    again = load_dataset("mnist-captions", "test")
    assert [again.source.caption(i) for i in range(50)] == [test.source.caption(i) for i in range(50)]
    x, y = novel[5]
    d, fg, bg = novel.source.composition(5)
    assert x.shape == (3, 28, 28) and y.shape == (CAPTION_LEN,) and y.dtype == torch.long
    assert novel.vocabulary.decode(y) == novel.source.caption(5)
    assert str(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"][d]) in novel.source.caption(5)
    corner = x[:, 0, 0].tolist()  # MNIST corners are background
    assert corner == list(PALETTE[bg])
    ink = x[:, (x - torch.tensor(PALETTE[bg])[:, None, None]).abs().sum(0) > 0]
    assert ink.shape[1] > 0
    assert caption_for(7, "red", "blue") == "a red seven on a blue background"
    with pytest.raises(ValueError, match="colours in"):
        caption_for(7, "purple", "blue")
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("mnist", "test-novel")


def test_edge_map_is_the_inner_boundary():
    a = np.zeros((1, 6, 6), np.uint8)
    a[0, 1:5, 1:5] = 200  # a 4x4 square: its 12 border pixels are edges, the inner 2x2 is not
    e = edge_map(a)
    assert e.dtype == np.uint8 and e.sum() == 12 and e[0, 2:4, 2:4].sum() == 0 and e[0, 1, 1] == 1
    t = edge_map(torch.from_numpy(a).long())
    assert isinstance(t, torch.Tensor) and t.dtype == torch.long and int(t.sum()) == 12
    assert edge_map(np.full((1, 3, 3), 255, np.uint8)).sum() == 8  # off-image neighbours count as off
    with pytest.raises(ValueError, match="grey images"):
        edge_map(np.zeros((3, 4, 4), np.uint8))
    ds = load_dataset("mnist-edges", "test")
    x, y = ds[0]
    assert ds.cond_spec == CondSpec.image((1, 28, 28), 2)
    assert y.shape == (1, 28, 28) and set(y.unique().tolist()) <= {0, 1}
    assert torch.equal(y, edge_map(x)) and 0 < int(y.sum()) < int((x >= 128).sum())


def test_image_condition_kind_checks():
    spec = CondSpec.image((1, 4, 4), 2)
    spec.check(torch.ones(3, 1, 4, 4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"condition images of shape \(3, 1, 4, 4\)"):
        spec.check(torch.ones(3, 1, 4, 5, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"condition values in \[0, 1\]"):
        spec.check(torch.full((3, 1, 4, 4), 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="needs image_shape"):
        CondSpec("image", levels=2)
    with pytest.raises(ValueError, match="levels is required"):
        CondSpec("image", image_shape=(1, 4, 4))


def test_code_datasets_carry_caption_tokens_and_condition_images(tmp_path):
    import argen
    from argen.data.codes import code_dataset

    torch.manual_seed(0)
    tok = argen.create_tokenizer("vqvae", image_shape=(3, 28, 28), channels=(8, 8), res_blocks=0, code_dim=4,
                                 codebook_size=16).eval()
    ds, made = code_dataset(tok, tmp_path, "mnist-captions", "test-novel", progress=False)
    assert made and ds.cond_spec.kind == "tokens" and ds.vocabulary == vocabulary()
    images = load_dataset("mnist-captions", "test-novel")
    assert torch.equal(ds[3][1], images[3][1])
    cached, made = code_dataset(tok, tmp_path, "mnist-captions", "test-novel", progress=False)
    assert not made and cached.cond_spec == ds.cond_spec and torch.equal(cached[3][1], ds[3][1])
    grey = argen.create_tokenizer("vqvae", image_shape=(1, 28, 28), channels=(8, 8), res_blocks=0, code_dim=4,
                                  codebook_size=16).eval()
    edges, _ = code_dataset(grey, tmp_path, "mnist-edges", "test", progress=False)
    # a tokenizer without a condition encoder passes the condition image through
    assert edges.cond_spec == CondSpec.image((1, 28, 28), 2) and edges[0][1].shape == (1, 28, 28)


def test_condition_image_file_is_checked_and_scaled(tmp_path):
    from argen.cli import read_condition_image
    from argen.data.images import write_image

    spec = CondSpec.image((1, 6, 6), 2)
    a = np.zeros((6, 6), np.uint8)
    a[2:4, 2:4] = 255
    write_image(tmp_path / "e.png", a)
    c = read_condition_image(str(tmp_path / "e.png"), spec)
    assert c.shape == (1, 6, 6) and c.dtype == torch.long and int(c.sum()) == 4 and int(c.max()) == 1
    write_image(tmp_path / "small.png", a[:5])
    with pytest.raises(ValueError, match=r"expected an image of shape \(C, H, W\) = \(1, 6, 6\), given \(1, 5, 6\)"):
        read_condition_image(str(tmp_path / "small.png"), spec)


def test_sample_refuses_a_prompt_or_condition_the_model_does_not_take(tmp_path, capsys):
    import argen
    from argen.cli import main

    torch.manual_seed(0)
    model = argen.create_model("pixelcnn", image_shape=(1, 4, 4), levels=2, hidden=8, n_blocks=1, head=8)
    argen.save(model, tmp_path / "run", step=0)
    assert main(["sample", str(tmp_path / "run"), "--prompt", "a red two", "-o", str(tmp_path / "x.png")]) == 2
    assert "--prompt needs a text-conditioned model" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "run"), "--condition", "e.png", "-o", str(tmp_path / "x.png")]) == 2
    assert "--condition needs an image-conditioned model" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "run"), "--prompt", "a", "--class", "1", "-o", str(tmp_path / "x.png")]) == 2
    assert "at most one of --class, --prompt, --condition" in capsys.readouterr().err


def test_a_condition_encoding_tokenizer_refuses_data_without_its_condition(tmp_path, capsys):
    from argen.cli import main

    assert main(["train", "iqvae", "--data", "mnist", "--steps", "1", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "encodes each image with its condition" in err and "mnist-edges" in err
    assert not (tmp_path / "t" / "config.json").exists()
