"""Contract v2, items 1-2: positions and levels beyond 8-bit pixels, and declared conditioning."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import argen
from argen.conditioning import CondSpec, batch_condition, sample_conditions
from argen.data import load_dataset
from argen.data.dataset import ArgenDataset, ArraySource
from argen.data.images import make_grid, to_uint8
from argen.distributions import MAX_LEVELS, Categorical
from argen.distributions.logistic_mixture import DiscretizedLogisticMixture
from argen.models.base import ARModel, ModelConfig
from argen.positions import at, channels_first, index, put, raster
from argen.registry import tiny_kwargs

CODES = 16384  # a 16,384-entry tokenizer: its codes are an ordinary (1, h, w) grid


# ----- positions ---------------------------------------------------------------------------------
def test_position_helper_indexes_the_trailing_dims():
    x = torch.arange(2 * 3 * 4 * 5).view(2, 3, 4, 5)
    assert torch.equal(at(x, (1, 2)), x[:, :, 1, 2])
    assert torch.equal(at(x, (1, 2), channel=1), x[:, 1, 1, 2])
    assert torch.equal(at(x.sum(1), (3, 4)), x.sum(1)[:, 3, 4])  # per-position values (B, H, W)
    table = torch.randn(2, 3, 7, 4, 5)  # conditionals (B, C, L, H, W)
    assert torch.equal(at(table, (0, 1)), table[:, :, :, 0, 1])
    video = torch.zeros(2, 3, 4, 5, 6, dtype=torch.long)  # (B, C, T, H, W) parameters of a video model
    put(video, (1, 2, 3), 7)
    put(video, (0, 0, 0), torch.tensor([1, 2]), channel=2)
    assert int(video.sum()) == 7 * 2 * 3 + 3 and int(video[1, 2, 0, 0, 0]) == 2
    assert index((1, 2)) == (Ellipsis, 1, 2) and index((1, 2), channel=0) == (slice(None), 0, 1, 2)
    assert raster((2, 3)) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert len(raster((2, 2, 3))) == 12 and raster((2, 2, 3))[3] == (0, 1, 0)


def test_no_hand_written_position_indexing_outside_the_planner():
    """Samplers, codec and tests index positions through argen.positions (the convolution planner,
    sampling/cached.py and sampling/conv_plan/, builds its own index tables)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = [root / "src/argen/compress/codec.py", root / "src/argen/sampling/naive.py",
             root / "src/argen/sampling/ardm_sampler.py", root / "tests/test_conformance.py",
             root / "tests/test_fast_steppers.py"]
    offenders = [str(p.relative_to(root)) for p in files if "slice(None), slice(None)" in p.read_text()]
    assert offenders == []


# ----- levels: a prior over a tokenizer's codes is an ordinary model -----------------------------
@pytest.mark.parametrize("name", ["pixelcnn", "gated_pixelcnn"])
def test_categorical_models_take_a_16384_code_grid(name):
    torch.manual_seed(0)
    m = argen.create_model(name, image_shape=(1, 4, 4), levels=CODES, **tiny_kwargs(name)).eval()
    assert m.levels == CODES and m.max_levels == MAX_LEVELS
    assert m.data_shape == (1, 4, 4) and m.position_shape == (4, 4) == m.spatial_shape
    x = torch.randint(0, CODES, (3, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        total = m.log_prob(x)
        per_pos = m.log_prob(x, reduce=False)
        assert total.shape == (3,) and per_pos.shape == (3, 4, 4)
        torch.testing.assert_close(per_pos.flatten(1).sum(1), total)
        # normalization over all 16,384 levels at a position: the table sums to 1, log_prob at any
        # value is its entry, and the table does not depend on the value there (causality)
        for pos in ((0, 0), (2, 1), (3, 3)):
            table = at(m.conditionals(x)[:, 0], pos).double()  # (B, L)
            assert table.shape == (3, CODES)
            assert float(table.logsumexp(1).abs().max()) < 1e-4
            values = torch.randint(0, CODES, (3,), generator=torch.Generator().manual_seed(pos[0]))
            y = x.clone()
            put(y, pos, values, channel=0)
            torch.testing.assert_close(at(m.log_prob(y, reduce=False), pos).double(),
                                       table.gather(1, values[:, None])[:, 0], atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(at(m.conditionals(y)[:, 0], pos).double(), table, atol=1e-5, rtol=1e-5)
    s = m.sample(4, generator=torch.Generator().manual_seed(3))
    assert s.shape == (4, 1, 4, 4) and s.dtype == torch.long
    assert int(s.min()) >= 0 and int(s.max()) < CODES and int(s.max()) > 255  # not folded into 8 bits
    assert torch.equal(s, m.sample(4, generator=torch.Generator().manual_seed(3)))


def test_code_grid_model_round_trips(tmp_path):
    m = argen.create_model("pixelcnn", image_shape=(1, 4, 4), levels=CODES, **tiny_kwargs("pixelcnn")).eval()
    argen.save(m, tmp_path / "run")
    back = argen.load(tmp_path / "run")
    x = torch.randint(0, CODES, (2, 1, 4, 4))
    with torch.no_grad():
        torch.testing.assert_close(back.log_prob(x), m.log_prob(x))


@pytest.mark.parametrize("name,extra", [("pixelcnn_pp", {}), ("pixelsnail", {}), ("lmconv", {})])
def test_logistic_mixture_models_refuse_more_than_256_levels(name, extra):
    with pytest.raises(ValueError, match="at most 256 levels, given 1024"):
        argen.create_model(name, image_shape=(1, 8, 8), levels=1024, **tiny_kwargs(name), **extra)
    argen.create_model(name, image_shape=(1, 8, 8), levels=256, **tiny_kwargs(name), **extra)  # still fine


def test_limits_are_declared_by_the_distribution():
    assert DiscretizedLogisticMixture.max_levels == 256 and Categorical.max_levels == MAX_LEVELS == 65536
    with pytest.raises(ValueError, match="at most|levels must be in"):
        DiscretizedLogisticMixture(1, 257)
    Categorical(1, 65536)
    with pytest.raises(ValueError, match="65536"):
        Categorical(1, 65537)
    # lmconv's limit follows its head: a categorical head takes codes
    m = argen.create_model("lmconv", image_shape=(1, 8, 8), levels=1024, head="categorical", **tiny_kwargs("lmconv"))
    assert m.max_levels == MAX_LEVELS
    with pytest.raises(ValueError, match="model.levels"):
        argen.create_model("pixelcnn", image_shape=(1, 4, 4), levels=65537, **tiny_kwargs("pixelcnn"))
    with pytest.raises(ValueError, match="1 channel"):  # a code grid is (1, h, w)
        argen.create_model("pixelcnn", image_shape=(3, 4, 4), levels=1024, **tiny_kwargs("pixelcnn"))


# ----- a (T, H, W) position grid through the base class ------------------------------------------
@dataclasses.dataclass
class _ClipConfig(ModelConfig):
    frames: int = 2

    @property
    def data_shape(self) -> tuple[int, ...]:
        c, h, w = self.image_shape
        return (self.frames, c, h, w)


class _Clip(ARModel):
    """A causal toy over (T, C, H, W): each position's logits depend on the previous position's value."""

    config_class = _ClipConfig

    def __init__(self, config: _ClipConfig) -> None:
        super().__init__(config)
        self.distribution = Categorical(self.channels, self.levels)
        self.table = nn.Parameter(torch.randn(self.levels + 1, self.levels))

    def forward(self, x, cond=None):
        b, t, c, h, w = x.shape
        flat = x.permute(0, 2, 1, 3, 4).reshape(b, c, -1)  # (B, C, T*H*W) in raster order
        prev = torch.cat([torch.full_like(flat[:, :, :1], self.levels), flat[:, :, :-1]], dim=2)
        logits = self.table[prev]  # (B, C, N, L)
        return logits.permute(0, 1, 3, 2).reshape(b, c * self.levels, t, h, w)


def test_video_positions_are_time_height_width():
    m = _Clip(_ClipConfig(image_shape=(1, 2, 3), levels=5)).eval()
    assert m.data_shape == (2, 1, 2, 3) and m.position_shape == (2, 2, 3) and m.channels == 1
    assert m.generation_order() == raster((2, 2, 3))
    x = torch.randint(0, 5, (4, 2, 1, 2, 3))
    with torch.no_grad():
        per_pos = m.log_prob(x, reduce=False)
        assert per_pos.shape == (4, 2, 2, 3)  # one value per position, (B, T, H, W)
        torch.testing.assert_close(per_pos.flatten(1).sum(1), m.log_prob(x))
        table = m.conditionals(x)
        assert table.shape == (4, 1, 5, 2, 2, 3)  # (B, C, L, T, H, W)
        pos = (1, 0, 2)
        value = at(channels_first(x), pos, channel=0)
        torch.testing.assert_close(at(per_pos, pos), at(table[:, 0], pos).gather(1, value[:, None])[:, 0])
    assert channels_first(x).shape == (4, 1, 2, 2, 3)
    put(channels_first(x), pos, 4)  # a view: writes reach the (B, T, C, H, W) data
    assert bool((x[:, 1, :, 0, 2] == 4).all())
    img = torch.zeros(2, 3, 4, 4)
    assert channels_first(img) is img


# ----- data: uint16 codes --------------------------------------------------------------------------
def test_array_source_holds_uint16_codes():
    codes = np.random.default_rng(0).integers(0, CODES, (6, 1, 4, 4)).astype(np.uint16)
    ds = ArgenDataset("codes", ArraySource(codes, None, levels=CODES))
    assert ds.levels == CODES and ds.shape == (1, 4, 4)
    x, y = ds[2]
    assert x.dtype == torch.long and torch.equal(x, torch.from_numpy(codes[2].astype(np.int64))) and int(y) == -1
    with pytest.raises(ValueError, match=r"\[2, 256\] for uint8"):
        ArraySource(codes.astype(np.uint8), None, levels=1024)
    with pytest.raises(ValueError, match="uint8 or uint16"):
        ArraySource(codes.astype(np.int32), None, levels=CODES)
    with pytest.raises(ValueError, match=r"values must lie in \[0, 100\)"):
        ArraySource(codes, None, levels=100)


def test_npy_dataset_reads_uint16(tmp_path):
    codes = np.random.default_rng(1).integers(0, CODES, (20, 4, 4)).astype(np.uint16)
    np.savez(tmp_path / "codes.npz", images=codes, levels=np.int64(CODES))
    ds = load_dataset(f"npy:{tmp_path / 'codes.npz'}", "all")
    assert (ds.shape, ds.levels, len(ds)) == ((1, 4, 4), CODES, 20)
    assert torch.equal(ds[5][0][0], torch.from_numpy(codes[5].astype(np.int64)))
    np.save(tmp_path / "raw.npy", codes)
    assert load_dataset(f"npy:{tmp_path / 'raw.npy'}", "all").levels == 65536  # no declared levels: 16 bits
    np.savez(tmp_path / "small.npz", images=codes, levels=np.int64(100))
    with pytest.raises(ValueError, match=r"values must lie in \[0, 100\)"):
        load_dataset(f"npy:{tmp_path / 'small.npz'}", "all")
    for view in ("binary", "dynbin", "3bit", "color"):  # views of 8-bit intensities refuse codes
        with pytest.raises(ValueError, match="view of pixel intensities"):
            load_dataset(f"npy:{tmp_path / 'codes.npz'}-{view}", "all")


def test_image_output_refuses_token_grids():
    x = torch.randint(0, CODES, (2, 1, 4, 4))
    for fn in (to_uint8, make_grid):
        with pytest.raises(ValueError, match="token grid is not an image"):
            fn(x, CODES)


def test_trainer_trains_a_code_grid_prior_without_an_image_grid(tmp_path):
    from argen.train import TrainConfig, Trainer

    codes = np.random.default_rng(2).integers(0, 1024, (16, 1, 4, 4)).astype(np.uint16)
    data = ArgenDataset("codes", ArraySource(codes, None, levels=1024))
    torch.manual_seed(0)
    m = argen.create_model("pixelcnn", image_shape=(1, 4, 4), levels=1024, **tiny_kwargs("pixelcnn"))
    cfg = TrainConfig(steps=2, batch_size=8, warmup_steps=0, progress=False, tensorboard=False, sample_every=1,
                      eval_examples=8, eval_batch_size=8, ema_decay=None)
    trainer = Trainer(m, data, cfg, run_dir=tmp_path / "run", device="cpu")
    trainer.fit()
    assert trainer.step == 2 and trainer.sample_grid() is None
    assert not list((tmp_path / "run").glob("samples/*.png"))


# ----- conditioning ------------------------------------------------------------------------------
def test_cond_spec_kinds_and_their_checks():
    none, labels = CondSpec(), CondSpec.classes(3)
    assert CondSpec.classes(None) == none and not none.conditional and labels.kind == "class"
    none.check(None, 2)
    with pytest.raises(ValueError, match="cond=None"):
        none.check(torch.tensor([0, 1]), 2)
    labels.check(torch.tensor([0, 2]), 2)
    labels.check(None, 2)  # the unconditional case is always allowed
    with pytest.raises(ValueError, match=r"labels in \[0, 2\]"):
        labels.check(torch.tensor([0, 3]), 2)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        labels.check(torch.tensor([0, 1, 2]), 2)

    text = CondSpec.tokens(vocab_size=10, max_len=4)
    text.check(torch.randint(0, 10, (2, 4)), 2)
    text.check(torch.randint(0, 10, (2, 1)), 2)
    for bad, msg in ((torch.randint(0, 10, (2, 5)), r"L <= 4"), (torch.randint(0, 10, (3, 2)), r"\(2, L <= 4\)"),
                     (torch.randint(0, 10, (2,)), "tokens of shape"), (torch.rand(2, 3), "torch.float32"),
                     (torch.tensor([[0, 10]]).expand(2, 2), r"tokens in \[0, 9\]"),
                     (torch.tensor([[-1, 0]]).expand(2, 2), r"tokens in \[0, 9\]"), ([[1, 2]], "list")):
        with pytest.raises(ValueError, match=msg):
            text.check(bad, 2)
    CondSpec.tokens(vocab_size=10).check(torch.zeros(2, 100, dtype=torch.long), 2)  # no max_len: any length

    ctx = CondSpec.context_frames(2, frame_shape=(1, 3, 3), levels=4)
    ctx.check(torch.randint(0, 4, (5, 2, 1, 3, 3)), 5)
    for bad, msg in ((torch.randint(0, 4, (5, 3, 1, 3, 3)), r"\(5, 2, 1, 3, 3\)"),
                     (torch.randint(0, 4, (5, 2, 3, 3, 3)), "context frames"),
                     (torch.randint(0, 4, (5, 2, 3, 3)), "context frames"),
                     (torch.full((5, 2, 1, 3, 3), 4), r"frame values in \[0, 3\]")):
        with pytest.raises(ValueError, match=msg):
            ctx.check(bad, 5)
    CondSpec.context_frames(1).check(torch.zeros(2, 1, 3, 8, 8, dtype=torch.long), 2)  # any frame shape


def test_cond_spec_refuses_inconsistent_declarations():
    for kw, msg in ((dict(kind="text"), "kind must be one of"), (dict(kind="class"), "num_classes is required"),
                    (dict(kind="tokens"), "vocab_size is required"), (dict(kind="frames"), "frames is required"),
                    (dict(kind="class", num_classes=0), ">= 1"), (dict(kind="class", num_classes=3, vocab_size=5),
                                                                  "takes no vocab_size"),
                    (dict(kind="none", frames=2), "takes no frames")):
        with pytest.raises(ValueError, match=msg):
            CondSpec(**kw)
    with pytest.raises(dataclasses.FrozenInstanceError):
        CondSpec.classes(3).num_classes = 4


@dataclasses.dataclass
class _TextConfig(type(argen.create_model("pixelcnn", **tiny_kwargs("pixelcnn")).config)):
    def cond_spec(self) -> CondSpec:
        return CondSpec.tokens(vocab_size=7, max_len=3)


def test_check_cond_follows_the_models_declared_spec():
    base = argen.create_model("pixelcnn", image_shape=(1, 4, 4), levels=4, **tiny_kwargs("pixelcnn"))
    model = type(base)(_TextConfig(image_shape=(1, 4, 4), levels=4, **tiny_kwargs("pixelcnn")))
    assert model.cond_spec == CondSpec.tokens(7, 3)
    model.check_cond(torch.randint(0, 7, (2, 3)), 2)
    x = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="tokens of shape"):
        model.check_input(x, torch.tensor([0, 1]))  # labels are not this model's cond
    with pytest.raises(ValueError, match=r"tokens in \[0, 6\]"):
        model.check_input(x, torch.full((2, 3), 7))
    assert base.cond_spec == CondSpec() and argen.create_model(
        "pixelcnn", num_classes=10, **tiny_kwargs("pixelcnn")).cond_spec == CondSpec.classes(10)


def test_sample_conditions_is_the_one_label_policy():
    spec = CondSpec.classes(3)
    assert sample_conditions(spec, 7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert sample_conditions(spec, 3, 2).tolist() == [2, 2, 2]
    assert sample_conditions(CondSpec(), 4) is None and sample_conditions(CondSpec.tokens(5), 4) is None
    with pytest.raises(ValueError, match=r"--class must be in \[0, 2\], given 3"):
        sample_conditions(spec, 2, 3, option="--class")
    with pytest.raises(ValueError, match="class-conditional"):
        sample_conditions(CondSpec(), 2, 0)
    assert batch_condition(CondSpec(), torch.tensor([1])) is None
    y = torch.tensor([1, 2])
    assert batch_condition(spec, y) is y and batch_condition(spec, None) is None


class _Recorder:
    """Stands in for `model.sample` and keeps the conditions it was given."""

    def __init__(self, model):
        self.model, self.conds = model, []

    def __call__(self, n, cond=None, **kw):
        self.conds.append(None if cond is None else cond.cpu())
        return torch.zeros((n, *self.model.data_shape), dtype=torch.long)


def test_cli_trainer_and_metrics_choose_labels_alike(tmp_path, monkeypatch):
    from argen.cli import _labels
    from argen.metrics.quality import sample_batches
    from argen.train import TrainConfig, Trainer

    m = argen.create_model("pixelcnn", image_shape=(1, 4, 4), levels=4, num_classes=3, **tiny_kwargs("pixelcnn"))
    want = sample_conditions(m.cond_spec, 8)
    assert torch.equal(_labels(m, 8, None), want) and torch.equal(_labels(m, 8, 1), torch.ones(8, dtype=torch.long))

    rec = _Recorder(m)
    monkeypatch.setattr(m, "sample", rec)
    list(sample_batches(m, 8, 3))
    assert torch.equal(torch.cat(rec.conds), want)  # balanced: 0..C-1 cycling over all n samples

    data = ArgenDataset("l", ArraySource(np.zeros((8, 1, 4, 4), np.uint8), np.arange(8) % 3, levels=4))
    trainer = Trainer(m, data, TrainConfig(steps=1, batch_size=8, progress=False, tensorboard=False, ema_decay=None,
                                           num_samples=8, warmup_steps=0), run_dir=tmp_path / "r", device="cpu")
    rec.conds.clear()
    trainer.sample_grid()
    assert torch.equal(rec.conds[0], want)
