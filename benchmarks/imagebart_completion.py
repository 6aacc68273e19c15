"""ImageBART vs a raster-order token GPT on completion from the bottom half, on MNIST codes.

Every training stage runs through the `argen` CLI in its own process, limited by process CPU
time (`train.time_limit`, `train.time_clock=cpu`), so other load on the machine does not shrink
a budget:

1. an fsq tokenizer on embedded MNIST (`--tokenizer-budget` CPU-s; or reuse `--tokenizer RUN`),
   then `argen tokenize` (7x7 code grids of the train and test splits);
2. `imagebart` (3 scales, top GPT 4 layers, encoder-decoders 2 + 2, width 128) and an
   unconditional `token_gpt` (4 layers, width 128), each for its own CPU budget;
3. on the first `--n` test digits, the code grid's bottom rows [h//2, h) known, the top rows
   [0, h//2) (21 of 49 codes for 7x7) held out:
   - token_gpt: the exact NLL of the top rows, -sum of log p(code | codes before it) over them:
     in raster order the top comes first, so this is -log p(top), which cannot use the bottom;
   - imagebart: minus the top positions' share of its bound (`log_prob(reduce=False)` summed over
     the top rows; `--draws` forward-chain draws averaged): an unbiased estimate of an upper bound
     on -log p_c(top | bottom), where p_c is the very distribution `complete(x, known=bottom)`
     samples from (module doc of `argen.models.tokens.imagebart`);
   both in nats per held-out code (and bits), plus each model's whole-grid figure (token_gpt
   exact, imagebart the bound);
4. a grid PNG (rows: original, masked, imagebart completion, token_gpt completion; decoded codes)
   under benchmarks/out/, and a markdown report.

    OMP_NUM_THREADS=1 python benchmarks/imagebart_completion.py --threads 1 --out runs/bench-imagebart \\
        --report /tmp/bench/imagebart.md
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch
from cli_runs import argen_cli, train_budgeted

HERE = Path(__file__).resolve().parent


@torch.no_grad()
def evaluate(args: argparse.Namespace, tok_dir: Path, ib_dir: Path, gpt_dir: Path) -> dict:
    import argen
    from argen.data import load_dataset
    from argen.data.codes import code_dataset
    from argen.data.images import save_grid

    torch.set_num_threads(args.threads)
    tok = argen.load(tok_dir).eval()
    ib = argen.load(ib_dir, compose=False).eval()
    gpt = argen.load(gpt_dir, compose=False).eval()
    codes_ds, _ = code_dataset(tok, tok_dir, "mnist", "test", progress=False)
    n = min(args.n, len(codes_ds))
    x = torch.stack([torch.as_tensor(codes_ds[i][0]) for i in range(n)]).long()
    _, h, w = x.shape[1:]
    top = torch.zeros(h, w, dtype=torch.bool)
    top[: h // 2] = True
    known = ~top
    held = int(top.sum())
    out: dict = {"n": n, "held_out_codes": held, "codes": h * w}
    t0 = time.perf_counter()
    g_lp, ib_lp, g_all, ib_all = [], [], [], []
    gen = torch.Generator().manual_seed(0)
    for chunk in x.split(250):
        per = gpt.log_prob(chunk, reduce=False)
        g_lp.append(per[:, top].sum(1))
        g_all.append(per.flatten(1).sum(1))
        per = ib.log_prob(chunk, reduce=False, generator=gen, samples=args.draws)
        ib_lp.append(per[:, top].sum(1))
        ib_all.append(per.flatten(1).sum(1))
    out["eval_seconds"] = time.perf_counter() - t0
    for name, lp in (("token_gpt_top", g_lp), ("imagebart_top", ib_lp)):
        nats = -float(torch.cat(lp).mean()) / held
        out[name] = {"nats_per_code": nats, "bits_per_code": nats / math.log(2)}
    for name, lp in (("token_gpt_all", g_all), ("imagebart_all", ib_all)):
        nats = -float(torch.cat(lp).mean()) / (h * w)
        out[name] = {"nats_per_code": nats, "bits_per_code": nats / math.log(2)}
    # the picture: original / masked / imagebart / token_gpt completions of the first examples
    k = args.show
    pick = torch.linspace(0, n - 1, k).long()  # spread over the split (the test digits come sorted by class)
    sample = x[pick]
    gen_ib = torch.Generator().manual_seed(1)
    gen_gpt = torch.Generator().manual_seed(1)
    t1 = time.perf_counter()
    done_ib = ib.complete(sample, known, generator=gen_ib)
    out["imagebart_complete_s_per_image"] = (time.perf_counter() - t1) / k
    t1 = time.perf_counter()
    done_gpt = gpt.complete(sample, known, generator=gen_gpt)
    out["token_gpt_complete_s_per_image"] = (time.perf_counter() - t1) / k
    images = load_dataset("mnist", "test")
    original = torch.stack([torch.as_tensor(images[int(i)][0]) for i in pick]).long()
    masked = original.clone()
    cut = original.shape[-2] * (h // 2) // h  # pixel rows of the held-out code rows
    masked[:, :, :cut] = images.levels // 2 if hasattr(images, "levels") else 128
    rows = [original, masked, tok.decode(done_ib[:, 0]), tok.decode(done_gpt[:, 0])]
    levels = getattr(tok, "levels", 256)
    path = HERE / "out" / "imagebart_completion.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid(torch.cat(rows).cpu(), levels, path, nrow=k)
    out["grid"] = str(path.relative_to(HERE.parent))
    out["params"] = {"imagebart": sum(p.numel() for p in ib.parameters()),
                     "token_gpt": sum(p.numel() for p in gpt.parameters())}
    return out


def train(name: str, out: Path, budget: float, args: argparse.Namespace, *extra: str,
          sets: tuple[str, ...] = ()) -> dict:
    """Train (or, with --reuse, keep) a run limited to `budget` CPU-seconds; its config.json."""
    return train_budgeted(name, out, budget, *extra, lr=args.lr, threads=args.threads, reuse=args.reuse,
                          eval_examples=500, sets=("train.sample_every=none", *sets))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default=None, help="reuse this fsq/vqvae run instead of training one")
    p.add_argument("--tokenizer-budget", type=float, default=240.0, help="CPU-seconds for the fsq tokenizer")
    p.add_argument("--imagebart-budget", type=float, default=450.0, help="CPU-seconds for imagebart (all scales)")
    p.add_argument("--gpt-budget", type=float, default=450.0, help="CPU-seconds for token_gpt")
    p.add_argument("--scales", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n", type=int, default=1000, help="test digits evaluated")
    p.add_argument("--draws", type=int, default=4, help="forward-chain draws per imagebart bound")
    p.add_argument("--show", type=int, default=10, help="examples in the picture")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench-imagebart")
    p.add_argument("--report", default="/tmp/bench/imagebart.md")
    p.add_argument("--reuse", action="store_true", help="keep runs already trained in --out")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                    "load_at_start": os.getloadavg(), "settings": vars(args)}
    if args.tokenizer is None:
        tok_dir = out / "fsq"
        report["tokenizer"] = train("fsq", tok_dir, args.tokenizer_budget, args, "--data", "mnist")["metrics"]
    else:
        tok_dir = Path(args.tokenizer)
        report["tokenizer"] = json.loads((tok_dir / "config.json").read_text()).get("metrics", {})
    argen_cli("tokenize", str(tok_dir), threads=args.threads)
    ib = train("imagebart", out / "imagebart", args.imagebart_budget, args, "--tokenizer", str(tok_dir),
               sets=(f"model.scales={args.scales}",))
    gpt = train("token_gpt", out / "token_gpt", args.gpt_budget, args, "--tokenizer", str(tok_dir))
    report["imagebart_run"] = {"steps": ib["step"], "test_bpd_bound": ib["metrics"].get("test_bpd")}
    report["token_gpt_run"] = {"steps": gpt["step"], "test_bpd": gpt["metrics"].get("test_bpd")}
    report["eval"] = evaluate(args, tok_dir, out / "imagebart", out / "token_gpt")
    report["load_at_end"] = os.getloadavg()
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    write_markdown(report, Path(args.report))


def write_markdown(r: dict, path: Path) -> None:
    e = r["eval"]
    s = r["settings"]
    lines = [
        "## ImageBART vs raster token GPT: completing the top half of MNIST codes from the bottom half",
        "",
        f"fsq tokenizer (7x7 codes), {e['n']} test digits; held out: code rows [0, h//2) = {e['held_out_codes']} of "
        f"{e['codes']} codes; known: the rest. Lower is better.",
        "",
        "| model | params | train steps (CPU-s) | top half given bottom, nats/code | bits/code | whole grid, bits/code |",
        "|---|---|---|---|---|---|",
        f"| token_gpt (raster) | {e['params']['token_gpt']:,} | {r['token_gpt_run']['steps']} ({s['gpt_budget']:.0f}) | "
        f"{e['token_gpt_top']['nats_per_code']:.3f} (exact -log p(top): cannot see the bottom) | "
        f"{e['token_gpt_top']['bits_per_code']:.3f} | {e['token_gpt_all']['bits_per_code']:.3f} (exact) |",
        f"| imagebart ({s['scales']} scales) | {e['params']['imagebart']:,} | {r['imagebart_run']['steps']} "
        f"({s['imagebart_budget']:.0f}) | {e['imagebart_top']['nats_per_code']:.3f} (upper bound on -log p_c(top given "
        f"bottom), {s['draws']} chain draws) | {e['imagebart_top']['bits_per_code']:.3f} | "
        f"{e['imagebart_all']['bits_per_code']:.3f} (bound) |",
        "",
        f"Completion time per image (batch {s['show']}): imagebart {e['imagebart_complete_s_per_image']:.3f} s, "
        f"token_gpt {e['token_gpt_complete_s_per_image']:.3f} s. Picture: `{e['grid']}` (rows: original, masked "
        "(top rows grey), imagebart, token_gpt).",
        "",
        "What the numbers are: token_gpt's is exact, and in raster order the top half comes first, so it is the",
        "marginal -log p(top); imagebart's is minus the held-out positions' share of its ELBO, an unbiased estimate",
        "of an upper bound on -log p_c(top | bottom) for the distribution p_c its `complete` samples from (the",
        "lower scales' encoders read the known bottom half).",
        "",
        "Command (each training stage a separate `argen train` process under train.time_clock=cpu; OMP_NUM_THREADS=1):",
        "",
        "    OMP_NUM_THREADS=1 python benchmarks/imagebart_completion.py --threads 1 --out runs/bench-imagebart "
        f"--tokenizer-budget {s['tokenizer_budget']:.0f} --imagebart-budget {s['imagebart_budget']:.0f} "
        f"--gpt-budget {s['gpt_budget']:.0f}" + (f" --tokenizer {s['tokenizer']}" if s["tokenizer"] else ""),
        "",
        f"Machine: {r['machine']}; load average at start {tuple(round(v, 2) for v in r['load_at_start'])}, "
        f"at end {tuple(round(v, 2) for v in r['load_at_end'])} (2 cores shared by other jobs; budgets are CPU time).",
    ]
    if "tokenizer" in r:
        t = r["tokenizer"]
        budget = f"{s['tokenizer_budget']:.0f} CPU-s" if not s["tokenizer"] else f"reused run {s['tokenizer']}"
        lines.append(f"fsq tokenizer ({budget}): test PSNR {t.get('test_psnr', float('nan')):.2f} dB, codebook usage "
                     f"{t.get('test_usage', float('nan')):.3f}, perplexity {t.get('test_perplexity', float('nan')):.1f}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
