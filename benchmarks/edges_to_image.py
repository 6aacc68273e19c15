"""Edge-to-image on mnist-edges: IQ-VAE (joint quantization + regularizer + Gumbel-fed prior)
against separately quantized image and edge codes under a plain conditional prior, at equal CPU budgets.

Arms (every stage in this process, limited by process CPU time, `time.process_time`, with one
thread, so other load on the machine does not shrink a budget; one loop, optimizer, batch size
and learning rate for every stage):

  iqvae     the `iqvae` tokenizer (image and edge map quantized jointly against one codebook, the
            Gaussian regularizer) for `--tokenizer-budget` CPU-s, then the `iqvae` prior over its
            image codes given `encode_condition` edge tokens (gumbel_feed 0.1) for `--prior-budget`;
  separate  two `vqvae` tokenizers, one on the digits and one on their edge maps (levels 2), half
            the tokenizer budget each, then the same `iqvae` prior class with gumbel_feed=0 over the
            digit codes given the edge codes: taming's conditional token GPT layout, no joint
            quantization, no regularizer, no Gumbel feed.

Measured on the first `--n` test edge maps (one sample each, temperature 1): edge IoU of
`edge_map(sample)` against the condition edges (mean per image), the symmetric chamfer distance
between the two edge sets (pixels, mean per image), MNIST-feature FID against the 1,000 test
digits (`argen.metrics`, the shipped MNIST classifier's features), the prior's test bits per
token, and the same edge IoU for the tokenizer's own reconstruction of the test digits (the
ceiling the prior works under).

    OMP_NUM_THREADS=1 python benchmarks/edges_to_image.py --out runs/bench-edges
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

import argen
from argen.data import load_dataset
from argen.data.edges import edge_map


def tensors(split: str) -> tuple[Tensor, Tensor]:
    ds = load_dataset("mnist-edges", split)
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs).long(), torch.stack(ys).long()


def fit(step_fn: Callable[[Tensor], Tensor], params: list, n_items: int, budget: float, args: argparse.Namespace,
        after: Callable[[], None] | None = None) -> dict[str, Any]:
    """Adam on random batches of item indices until `budget` CPU-seconds are spent; `step_fn(idx)`
    returns the loss of a batch, `after()` runs after each optimizer step (EMA codebooks)."""
    opt = torch.optim.Adam(params, lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    start, steps, last = time.process_time(), 0, float("nan")
    while time.process_time() - start < budget:
        idx = torch.randint(0, n_items, (args.batch_size,), generator=g)
        loss = step_fn(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after is not None:
            after()
        steps, last = steps + 1, float(loss.detach())
    return {"steps": steps, "cpu_s": time.process_time() - start, "last_loss": last}


def train_tokenizer(tok: Any, x: Tensor, c: Tensor | None, budget: float, args: argparse.Namespace) -> dict[str, Any]:
    tok.train()
    held: dict = {}

    def step(idx: Tensor) -> Tensor:
        extra = {} if c is None else {"cond": c[idx]}
        loss, stats = tok.phase_loss("model", x[idx], 0, **extra)
        held["stats"] = stats
        return loss

    out = fit(step, list(tok.phase_parameters("model")), x.shape[0], budget, args,
              after=lambda: tok.update_statistics(held["stats"]))
    tok.eval()
    return out


def train_prior(prior: Any, codes: Tensor, cond: Tensor, budget: float, args: argparse.Namespace) -> dict[str, Any]:
    prior.train()
    out = fit(lambda idx: prior.loss(codes[idx], cond[idx]), list(prior.parameters()), codes.shape[0], budget, args)
    prior.eval()
    return out


@torch.no_grad()
def encode_all(fn: Callable[[Tensor], Tensor], x: Tensor, batch: int = 500) -> Tensor:
    return torch.cat([fn(x[i: i + batch]) for i in range(0, x.shape[0], batch)])


def iou(a: Tensor, b: Tensor) -> Tensor:
    """(B,) |a & b| / |a | b| of two binary maps (B, 1, H, W) (1 when both are empty)."""
    inter = (a.bool() & b.bool()).flatten(1).sum(1).double()
    union = (a.bool() | b.bool()).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def chamfer(a: Tensor, b: Tensor) -> Tensor:
    """(B,) symmetric chamfer distance (pixels) between the on-pixels of binary maps (B, 1, H, W);
    an empty map against a non-empty one counts the image diagonal."""
    h, w = a.shape[-2:]
    out = []
    for ai, bi in zip(a, b):
        pa, pb = ai[0].nonzero().double(), bi[0].nonzero().double()
        if not len(pa) and not len(pb):
            out.append(0.0)
        elif not len(pa) or not len(pb):
            out.append(float((h * h + w * w) ** 0.5))
        else:
            d = torch.cdist(pa, pb)
            out.append(0.5 * (float(d.min(1).values.mean()) + float(d.min(0).values.mean())))
    return torch.tensor(out, dtype=torch.float64)


@torch.no_grad()
def evaluate(name: str, tok: Any, prior: Any, cond_tokens: Tensor, edges: Tensor, test_codes: Tensor,
             test_cond: Tensor, x_test: Tensor, args: argparse.Namespace) -> dict[str, Any]:
    from argen.metrics.features import load_feature_extractor
    from argen.metrics.quality import batches_quality

    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    samples = torch.cat([tok.decode(prior.sample(len(c), c, generator=torch.Generator().manual_seed(args.seed + i),
                                                 progress=False).squeeze(1))
                         for i, c in enumerate(cond_tokens.split(args.sample_batch))])
    seconds = time.perf_counter() - t0
    gen_edges = edge_map(samples, 256)
    fid = batches_quality(list(samples.split(args.sample_batch)), 256, "mnist", metrics=["fid"],
                          features=load_feature_extractor("mnist"), split="test")["fid_mnist"]
    recon = encode_all(tok.reconstruct, x_test[: len(edges)])
    bpt = float(-prior.log_prob(test_codes, test_cond).mean() / (test_codes[0].numel() * torch.log(torch.tensor(2.0))))
    return {"arm": name, "edge_iou": float(iou(gen_edges, edges).mean()),
            "chamfer_px": float(chamfer(gen_edges, edges).mean()), "fid_mnist": float(fid),
            "test_bits_per_token": bpt, "recon_edge_iou": float(iou(edge_map(recon, 256), edges).mean()),
            "sample_s_per_image": seconds / len(edges), "n": len(edges)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer-budget", type=float, default=300.0, help="CPU-seconds per arm's tokenizer(s)")
    p.add_argument("--prior-budget", type=float, default=400.0, help="CPU-seconds per arm's prior")
    p.add_argument("--gumbel-feed", type=float, default=0.1, help="the iqvae arm's prior gumbel_feed")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n", type=int, default=500, help="test edge maps sampled from (one sample each)")
    p.add_argument("--sample-batch", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arms", nargs="+", default=["iqvae", "separate"], choices=["iqvae", "separate"])
    p.add_argument("--out", default="runs/bench-edges")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"settings": vars(args), "load_at_start": os.getloadavg()[0], "arms": {}}
    x, c = tensors("train")
    x_test, c_test = tensors("test")
    edges = c_test[: args.n]

    for arm in args.arms:
        torch.manual_seed(args.seed)
        if arm == "iqvae":
            tok = argen.create_tokenizer("iqvae")
            fits = {"tokenizer": train_tokenizer(tok, x, c, args.tokenizer_budget, args)}
            image_tok, cond_fn, cond_vocab, feed = tok, tok.encode_condition, tok.condition_vocab, args.gumbel_feed
        else:
            image_tok = argen.create_tokenizer("vqvae")
            edge_tok = argen.create_tokenizer("vqvae", levels=2)
            fits = {"tokenizer": train_tokenizer(image_tok, x, None, args.tokenizer_budget / 2, args),
                    "edge_tokenizer": train_tokenizer(edge_tok, c, None, args.tokenizer_budget / 2, args)}
            cond_fn, cond_vocab, feed = (lambda e, t=edge_tok: t.encode(e).flatten(1)), edge_tok.codebook_size, 0.0
        codes, cond = encode_all(image_tok.encode, x)[:, None], encode_all(cond_fn, c)
        test_codes, test_cond = encode_all(image_tok.encode, x_test)[:, None], encode_all(cond_fn, c_test)
        prior = argen.create_model("iqvae", image_shape=(1, *image_tok.code_shape), levels=image_tok.codebook_size,
                                   cond_vocab=cond_vocab, cond_len=cond.shape[1], gumbel_feed=feed)
        fits["prior"] = train_prior(prior, codes, cond, args.prior_budget, args)
        row = evaluate(arm, image_tok, prior, test_cond[: args.n], edges, test_codes, test_cond, x_test, args)
        row["fits"] = fits
        report["arms"][arm] = row
        print(json.dumps(row), flush=True)
        (out / "report.json").write_text(json.dumps(report, indent=2))
    report["load_at_end"] = os.getloadavg()[0]
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
