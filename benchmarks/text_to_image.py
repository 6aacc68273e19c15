"""Text-to-image faithfulness of `parti` on `mnist-captions`: digit and colours as asked, FID.

Every training stage runs through the `argen` CLI in its own process, limited by process CPU time
(`train.time_limit`, `train.time_clock=cpu`), so other load on the machine does not shrink a budget:

1. an `fsq` tokenizer (default config, 28x28x3 -> 7x7 codes, [8, 6, 5] = 240 codes) trains on
   mnist-captions images for `--tokenizer-budget` CPU-seconds;
2. a `parti` prior (default config, caption dropout 0.1) trains over its cached codes with the
   captions (`--conditional`) for `--prior-budget` CPU-seconds;
3. for `--prompts` compositions (digit, fg, bg) of each prompt set, `--per-prompt` samples of the
   caption "a {fg} {digit} on a {bg} background" (the first phrasing) at each CFG scale, and with
   reranking (best of `--rerank-k` by pmi) at `--rerank-scale`:
     - "train compositions": compositions of the test split (all occur in training),
     - "held-out compositions": compositions of test-novel (never in training: compositional
       generalisation; every word and every colour pair occurs in training with other partners).

Measured from pixels (the same functions run on the real images of those prompts as a reference
row, and on the tokenizer's reconstructions of them as the tokenizer's ceiling):

- colours: the background colour is the per-channel median of the 2-pixel border (MNIST digits sit
  in the central 20x20); each pixel's ink is its RGB distance from that colour, divided by the
  image's largest distance; the foreground colour is the median colour of the pixels with ink > 0.5.
  Each is mapped to the nearest `PALETTE` colour (RGB distance) and compared with the prompt's.
- digit: the ink map (0..255, a white digit on black, as MNIST) goes to the shipped MNIST
  classifier (`argen.metrics.mnist_net`); correct when its argmax is the prompt's digit. Why not the
  luma grey of `MnistFeatures`: a blue digit on yellow is dark on bright in luma, which the
  classifier never saw; the ink map is colour-pair invariant and gives back the grey digit for
  real images (they are colourised by blending the two colours by the grey value).
- all: digit, fg and bg all right.
- MNIST-feature FID: the classifier's 128-d features of the ink maps of all samples of a prompt
  set against those of the 1,000 real test images (training compositions) -- shape only, colour is
  measured above; not comparable to Inception FID.

    OMP_NUM_THREADS=1 python benchmarks/text_to_image.py --out runs/bench-t2i --report /tmp/bench/parti.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from cli_runs import train_budgeted
from torch import Tensor

PHRASING = 0  # "a {fg} {digit} on a {bg} background"


# ----- measuring from pixels -------------------------------------------------------------------------
def ink_and_colours(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(N, 3, 28, 28) 0..255 -> ink (N, 1, 28, 28) long 0..255, foreground and background RGB (N, 3)."""
    xf = x.float()
    border = torch.ones(x.shape[-2:], dtype=torch.bool)
    border[2:-2, 2:-2] = False
    bg = xf[:, :, border].median(-1).values  # (N, 3)
    dist = (xf - bg[:, :, None, None]).norm(dim=1)  # (N, H, W)
    ink = dist / dist.flatten(1).amax(1).clamp(min=1.0)[:, None, None]
    pixels = xf.flatten(2).transpose(1, 2)  # (N, HW, 3)
    on = (ink.flatten(1) > 0.5)[:, :, None].expand_as(pixels)
    fg = torch.where(on, pixels, torch.nan).nanmedian(1).values  # (N, 3)
    return (ink * 255).round().long()[:, None], fg, bg


def train(name: str, out: Path, budget: float, args: argparse.Namespace, *extra: str) -> dict:
    """Train (or, with --reuse, keep) a run limited to `budget` CPU-seconds; its config.json."""
    return train_budgeted(name, out, budget, *extra, lr=args.lr, threads=args.threads, reuse=args.reuse,
                          batch_size=args.batch_size)


def nearest_colour(rgb: Tensor, names: list[str], palette: Tensor) -> list[str]:
    idx = torch.cdist(torch.nan_to_num(rgb, nan=-1e3), palette).argmin(1)
    return [names[int(i)] for i in idx]


class Judge:
    """Digit / colour / FID measurements of image batches against prompts (see the module doc)."""

    def __init__(self) -> None:
        from argen.data.captions import PALETTE
        from argen.metrics.mnist_net import load_mnist_classifier

        self.net = load_mnist_classifier()
        self.names = list(PALETTE)
        self.palette = torch.tensor([PALETTE[n] for n in self.names], dtype=torch.float32)

    @torch.no_grad()
    def features(self, x: Tensor) -> tuple[Tensor, Tensor, list[str], list[str]]:
        ink, fg, bg = ink_and_colours(x)
        feats, logits = [], []
        for chunk in ink.split(500):
            f, lg = self.net(chunk.float() / 255.0)
            feats.append(f)
            logits.append(lg)
        return (torch.cat(feats), torch.cat(logits).argmax(1), nearest_colour(fg, self.names, self.palette),
                nearest_colour(bg, self.names, self.palette))

    def score(self, x: Tensor, comps: list[tuple[int, str, str]], reference) -> dict:
        from argen.metrics.frechet import frechet_distance, gaussian_stats

        feats, digits, fgs, bgs = self.features(x)
        want_d = torch.tensor([c[0] for c in comps])
        d_ok = digits == want_d
        fg_ok = torch.tensor([f == c[1] for f, c in zip(fgs, comps)])
        bg_ok = torch.tensor([b == c[2] for b, c in zip(bgs, comps)])
        stats = gaussian_stats(feats)
        fid = frechet_distance(stats.mean, stats.cov, reference.mean, reference.cov)
        share = lambda t: float(t.float().mean())  # noqa: E731
        return {"n": len(comps), "digit": share(d_ok), "fg": share(fg_ok), "bg": share(bg_ok),
                "all": share(d_ok & fg_ok & bg_ok), "fid": fid}


def prompt_sets(n_prompts: int, seed: int) -> dict[str, list[tuple[int, str, str]]]:
    """`n_prompts` distinct compositions of the test split (training ones) and of test-novel (held out)."""
    from argen.data.catalog import load_dataset

    out = {}
    rng = np.random.default_rng(seed)
    for name, split in (("train compositions", "test"), ("held-out compositions", "test-novel")):
        src = load_dataset("mnist-captions", split).source
        comps = sorted({src.composition(i) for i in range(len(src))})
        pick = rng.choice(len(comps), size=min(n_prompts, len(comps)), replace=False)
        out[name] = [comps[int(i)] for i in sorted(pick)]
    return out


def real_images(split: str, comps: list[tuple[int, str, str]], per_prompt: int) -> tuple[Tensor, list]:
    """Real images of those compositions (up to `per_prompt` each, from the split's items)."""
    from argen.data.catalog import load_dataset

    src = load_dataset("mnist-captions", split).source
    wanted = {c: [] for c in comps}
    for i in range(len(src)):
        c = src.composition(i)
        if c in wanted and len(wanted[c]) < per_prompt:
            wanted[c].append(i)
    idx = [i for c in comps for i in wanted[c]]
    x = torch.stack([torch.from_numpy(src.get(i)[0].astype(np.int64)) for i in idx])
    return x, [src.composition(i) for i in idx]


def reference_stats(judge: Judge):
    from argen.data.catalog import load_dataset
    from argen.metrics.frechet import gaussian_stats

    src = load_dataset("mnist-captions", "test").source
    x = torch.stack([torch.from_numpy(src.get(i)[0].astype(np.int64)) for i in range(len(src))])
    return gaussian_stats(judge.features(x)[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-t2i", help="run directories (tokenizer, parti)")
    p.add_argument("--report", default="/tmp/bench/parti.md", help="markdown table written here (+ .json beside)")
    p.add_argument("--tokenizer-budget", type=float, default=300.0, help="CPU-seconds for the fsq tokenizer")
    p.add_argument("--prior-budget", type=float, default=400.0, help="CPU-seconds for parti")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--prompts", type=int, default=30, help="compositions per prompt set")
    p.add_argument("--per-prompt", type=int, default=10, help="samples per prompt")
    p.add_argument("--cfg", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    p.add_argument("--rerank-k", type=int, default=4, help="candidates per output for the rerank row (1: none)")
    p.add_argument("--rerank-scale", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reuse", action="store_true", help="keep runs already trained in --out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                    "load_at_start": os.getloadavg(), "settings": vars(args), "rows": []}
    tok = train("fsq", out / "fsq", args.tokenizer_budget, args, "--data", "mnist-captions")
    prior = train("parti", out / "parti", args.prior_budget, args, "--tokenizer", str(out / "fsq"), "--conditional")

    import argen
    from argen.data.captions import caption_for
    from argen.sampling import SamplingConfig
    from argen.sampling.rerank import rerank_sample
    from argen.text import Vocabulary

    model = argen.load(out / "parti").eval()
    vocab = Vocabulary.from_dict(prior["vocabulary"])
    length = prior["config"]["cond_len"]
    report["tokenizer"] = {"steps": tok["step"], "metrics": tok["metrics"]}
    report["prior"] = {"steps": prior["step"], "metrics": prior["metrics"],
                       "params": sum(q.numel() for q in model.prior.parameters())}
    judge = Judge()
    reference = reference_stats(judge)
    sets = prompt_sets(args.prompts, args.seed)

    def row(set_name: str, what: str, x: Tensor, comps: list, seconds: float | None = None) -> None:
        r = {"prompts": set_name, "what": what, **judge.score(x, comps, reference)}
        if seconds is not None:
            r["s_per_image"] = seconds / len(comps)
        report["rows"].append(r)
        print(json.dumps(r), flush=True)

    for set_name, comps in sets.items():
        split = "test" if set_name.startswith("train") else "test-novel"
        real, real_comps = real_images(split, comps, args.per_prompt)
        row(set_name, "real images", real, real_comps)
        row(set_name, "tokenizer reconstruction", model.decode(model.encode(real)), real_comps)
        many = [c for c in comps for _ in range(args.per_prompt)]
        cond = vocab.batch([caption_for(d, fg, bg, PHRASING) for d, fg, bg in many], length)
        for scale in args.cfg:
            config = SamplingConfig(generator=torch.Generator().manual_seed(args.seed), cfg_scale=scale)
            t0 = time.perf_counter()
            x = model.sample(len(many), cond, config)
            row(set_name, f"parti, cfg {scale:g}", x, many, time.perf_counter() - t0)
        if args.rerank_k > 1:
            config = SamplingConfig(generator=torch.Generator().manual_seed(args.seed), cfg_scale=args.rerank_scale)
            t0 = time.perf_counter()
            x = rerank_sample(model, len(many), cond, args.rerank_k, config, score="pmi")
            row(set_name, f"parti, cfg {args.rerank_scale:g}, best of {args.rerank_k} by pmi", x, many,
                time.perf_counter() - t0)
    report["load_at_end"] = os.getloadavg()
    write_report(report, Path(args.report))


def write_report(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(report, indent=2))
    s = report["settings"]
    lines = [
        "## Text-to-image: parti on mnist-captions",
        "",
        f"`OMP_NUM_THREADS=1 python benchmarks/text_to_image.py --out {s['out']} --report {path}` "
        f"(fsq tokenizer {s['tokenizer_budget']:g} CPU-s: {report['tokenizer']['steps']} steps, test PSNR "
        f"{report['tokenizer']['metrics'].get('test_psnr', float('nan')):.2f} dB; parti "
        f"{report['prior']['params']:,} parameters, {s['prior_budget']:g} CPU-s: {report['prior']['steps']} steps, "
        f"test {report['prior']['metrics'].get('test_bpd', float('nan')):.3f} bits/token; batch {s['batch_size']}, "
        f"lr {s['lr']:g}). {s['prompts']} prompts per set x {s['per_prompt']} samples, caption "
        "\"a {fg} {digit} on a {bg} background\". Machine: "
        f"{report['machine']}, load average {report['load_at_start'][0]:.1f} at start, "
        f"{report['load_at_end'][0]:.1f} at end.",
        "",
        "| prompts | images | n | digit | fg colour | bg colour | all three | MNIST FID | s / image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        sec = f"{r['s_per_image']:.4f}" if "s_per_image" in r else ""
        lines.append(f"| {r['prompts']} | {r['what']} | {r['n']} | {r['digit']:.1%} | {r['fg']:.1%} | {r['bg']:.1%} "
                     f"| {r['all']:.1%} | {r['fid']:.2f} | {sec} |")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
