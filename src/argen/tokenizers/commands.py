"""`argen tokenize RUN`: encode a dataset's splits once with a trained tokenizer, for prior training.

The code grids go to RUN/codes/<data>-<split>.npz (`argen.data.codes`; a video tokenizer's code volumes
(N, t, s, h, w)); `argen train PRIOR --tokenizer RUN` reads them (a video model over a video tokenizer's
codes). Each split's line reports the codebook usage on it.
"""
from __future__ import annotations

import argparse
import math
from typing import Any

from argen.runs import EXIT_OK, add_device_argument, device_arg, load_run, run_description, say


def register(sub: Any) -> None:
    from argen.fields import int_arg

    p = sub.add_parser("tokenize", help="write a dataset's code grids with a trained tokenizer (for prior training)")
    p.add_argument("run", help="tokenizer run directory (argen train vqvae|vqgan|fsq|vqvae3d ...)")
    p.add_argument("--data", default=None, help="dataset (default: the one the tokenizer trained on)")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files, where it needs one")
    p.add_argument("--splits", nargs="+", default=["train", "test"], choices=["train", "test"],
                   help="splits to encode (default: train test)")
    p.add_argument("--batch-size", type=int_arg(ge=1), default=256, help="images per encoder pass (default: 256)")
    p.add_argument("--refresh", action="store_true", help="encode again even when the cache holds these codes")
    add_device_argument(p)
    p.set_defaults(func=cmd_tokenize)


def usage_line(codes: Any, codebook_size: int) -> str:
    """Distinct codes used and the perplexity of their histogram, as one phrase."""
    import numpy as np

    counts = np.bincount(codes.reshape(-1).astype(np.int64), minlength=codebook_size)
    p = counts[counts > 0] / counts.sum()
    perplexity = math.exp(-float((p * np.log(p)).sum()))
    return f"{int((counts > 0).sum())} of {codebook_size} codes used, perplexity {perplexity:.1f}"


def cmd_tokenize(args: argparse.Namespace) -> int:
    from argen.data.codes import code_dataset, codes_path

    tokenizer = load_run(args.run, device_arg(args.device))
    kind = getattr(type(tokenizer), "kind", "model")
    if kind != "tokenizer":
        raise ValueError(f"{args.run!r} holds a {kind} model ({tokenizer.model_name!r}), expected a tokenizer run "
                         "(argen train vqvae|vqgan|fsq ...)")
    desc = run_description(args.run)
    data = args.data or desc.get("data")
    if not data:
        raise ValueError("this run does not record its dataset; pass --data NAME")
    root = args.data_root or desc.get("data_root")
    seed = int((desc.get("train") or {}).get("seed", 0))
    for split in args.splits:
        ds, made = code_dataset(tokenizer, args.run, data, split, root=root, seed=seed, batch_size=args.batch_size,
                                refresh=args.refresh)
        codes = ds.source.data
        say(f"argen: {data} {split}: {len(ds)} code grids {tuple(ds.shape)} "
            f"{'written to' if made else 'already in'} {codes_path(args.run, data, split, root, seed)}; "
            + usage_line(codes, tokenizer.codebook_size))
    return EXIT_OK
