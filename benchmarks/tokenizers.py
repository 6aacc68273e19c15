"""Train each tokenizer (default MNIST config) with a plain loop on the embedded MNIST and measure it.

Reports held-out reconstruction MSE and PSNR (the embedded test split), codebook usage and
perplexity of the test codes, usage over the recent training window, and seconds per training
step. The loop is the tokenizer protocol itself (Adam per phase over `phase_parameters`,
`phase_loss`, then `update_statistics`); the trainer-based version may replace it later.

    python benchmarks/tokenizers.py                                  # vqvae, fsq, vqgan; 300 steps
    python benchmarks/tokenizers.py --tokenizers vqvae --steps 1000 --set vqvae.l2_normalize=true
"""
from __future__ import annotations

import argparse
import json
import platform
import time
import typing

import torch

from argen.data.embedded import embedded_mnist
from argen.fields import coerce
from argen.tokenizers import create_tokenizer, get_tokenizer_entry, list_tokenizers


def mnist(split: str) -> torch.Tensor:
    """The embedded digits of `split` as a long tensor (N, 1, 28, 28) in [0, 256)."""
    images, _ = embedded_mnist(split)
    return torch.from_numpy(images).long().unsqueeze(1)


def overrides(pairs: list[str], name: str) -> dict[str, typing.Any]:
    """`--set NAME.FIELD=VALUE` options for tokenizer `name`, coerced to the field's type."""
    hints = typing.get_type_hints(get_tokenizer_entry(name).cls.config_class)
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        tok, _, field = key.partition(".")
        if tok == name:
            if field not in hints:
                raise SystemExit(f"--set {pair}: {name} has no field {field!r}")
            out[field] = coerce(value, hints[field], f"tokenizer.{field}")
    return out


def evaluate(tok, test: torch.Tensor, batch: int) -> dict[str, float]:
    tok.eval()
    totals: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for i in range(0, len(test), batch):
        for k, (s, c) in tok.eval_stats(test[i:i + batch]).items():
            totals[k] = (totals[k][0] + s, totals[k][1] + c) if k in totals else (s, c)
    return tok.summarize(totals)


def run(name: str, args: argparse.Namespace, train: torch.Tensor, test: torch.Tensor) -> dict[str, typing.Any]:
    torch.manual_seed(args.seed)
    kw = overrides(args.set, name)
    if name == "vqgan" and "disc_start" not in kw:
        kw["disc_start"] = args.disc_start
    tok = create_tokenizer(name, **kw)
    opts = {p: torch.optim.Adam(tok.phase_parameters(p), lr=args.lr, betas=(0.5, 0.9) if p == "disc" else (0.9, 0.999))
            for p in tok.optimizer_phases}
    g = torch.Generator().manual_seed(args.seed)
    tok.train()
    last: dict[str, float] = {}
    t0 = time.perf_counter()
    for step in range(args.steps):
        x = train[torch.randint(0, len(train), (args.batch_size,), generator=g)]
        stats: dict = {}
        for phase in tok.training_phases(step):
            loss, s = tok.phase_loss(phase, x, step)
            opts[phase].zero_grad(set_to_none=True)
            loss.backward()
            opts[phase].step()
            stats.update(s)
        tok.update_statistics(stats)
        last = {k: float(v[0].sum() / v[1].sum()) for k, v in stats.items() if v[0].dim() == 0}
    sec_per_step = (time.perf_counter() - t0) / args.steps
    result = {"tokenizer": name, "config": kw, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
              "params": sum(p.numel() for n, p in tok.named_parameters() if not n.startswith("discriminator.")),
              "codebook_size": tok.codebook_size, "sec_per_step": sec_per_step,
              "last_train": {k: round(v, 5) for k, v in last.items()}}
    result["test"] = evaluate(tok, test, args.eval_batch)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizers", nargs="+", default=["vqvae", "fsq", "vqgan"], choices=list_tokenizers())
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--disc-start", type=int, default=150, help="vqgan's disc_start unless --set gives one")
    p.add_argument("--eval-batch", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="NAME.FIELD=VALUE",
                   help="a config field of one tokenizer, e.g. vqvae.codebook_size=256 (repeatable)")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train, test = mnist("train"), mnist("test")
    results = []
    for name in args.tokenizers:
        r = run(name, args, train, test)
        results.append(r)
        t = r["test"]
        print(f"{name:6s} params {r['params']:,}  test mse {t['mse']:.5f}  psnr {t['psnr']:.2f} dB  "
              f"usage {t['usage']:.3f}  perplexity {t['perplexity']:.1f} / {r['codebook_size']}  "
              f"window usage {t.get('window_usage', float('nan')):.3f}  {r['sec_per_step'] * 1000:.1f} ms/step", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads,
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
