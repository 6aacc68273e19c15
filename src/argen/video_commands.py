"""CLI subcommand `argen predict`: video prediction, VPN's protocol.

    argen predict RUN --context 10 --frames 10 [-n 16] [--data D --split test] -o out.gif

Takes the first n clips of the data split, conditions the model on their first K true frames
(`model.predict(context (B, K, C, H, W), cond, config) -> (B, T, C, H, W)`, the Python API every
video model offers), and compares the next N generated frames with the true ones: per-frame MSE,
PSNR and SSIM (`argen.metrics.video`), and for likelihood models the nats per frame of the true
future frames given the context (exact, from `log_prob(reduce=False)`). Writes out.gif (each row
one clip: truth | prediction, K + N frames) and out.png (a strip: rows truth, prediction, ...,
columns frames). `--json PATH` also writes the figures.

Registered through `argen.cli.COMMAND_MODULES`; like the other command modules it imports only
`argen.runs` helpers, never `argen.cli`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from argen.runs import EXIT_OK, add_device_argument, device_arg, load_run, run_dataset, run_description, seed_arg


def register(subparsers: Any) -> None:
    from argen.fields import float_arg, int_arg

    p = subparsers.add_parser(
        "predict", help="video prediction: condition on the first K true frames, generate N, compare with the truth",
        description="Condition a video model on the first --context frames of test clips and generate --frames more; "
                    "reports per-frame MSE, PSNR and SSIM against the true frames and, for likelihood models, the "
                    "exact nats per frame of the true future given the context. Writes a GIF (or MP4) and a PNG strip.")
    p.add_argument("run", help="run directory of a video model written by `argen train`")
    p.add_argument("--context", type=int_arg(ge=1), required=True, metavar="K", help="true frames given to the model")
    p.add_argument("--frames", type=int_arg(ge=1), required=True, metavar="N",
                   help="frames to predict after the context (K + N <= the model's clip length)")
    p.add_argument("-n", "--num", type=int_arg(ge=1), default=8, help="number of clips (default: 8)")
    p.add_argument("-o", "--output", default="prediction.gif",
                   help="output video, .gif (or .mp4 with imageio-ffmpeg); a PNG strip is written beside it "
                        "(default: prediction.gif); existing files are replaced atomically")
    p.add_argument("--data", default=None, help="dataset (default: the one the run trained on)")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files, where it needs one")
    p.add_argument("--split", default="test", help="split the clips come from (default: test)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON to PATH")
    p.add_argument("--seed", type=seed_arg(), default=0, help="random seed of the draw (default: 0)")
    p.add_argument("--temperature", type=float_arg(gt=0), default=None,
                   help="divide logits by this, > 0 (default: 1.0, or the model's declared default)")
    p.add_argument("--top-k", type=int_arg(ge=1), default=None, help="keep the k most likely values per sub-pixel")
    p.add_argument("--top-p", type=float_arg(gt=0, le=1), default=None, help="nucleus sampling: keep the most likely mass p")
    p.add_argument("--naive", action="store_true", help="use the reference sampler instead of the model's own")
    add_device_argument(p)
    p.set_defaults(func=cmd_predict)


def check_frames(model: Any, context: int, frames: int) -> None:
    """Raise ValueError unless the model is a video model and K + N fits its clip length T."""
    shape = tuple(model.data_shape)
    if len(shape) != 4:
        raise ValueError(f"predict needs a video model (data (T, C, H, W)), given {model.model_name!r} with data "
                         f"shape {shape}")
    if context + frames > shape[0]:
        raise ValueError(f"expected --context + --frames <= {shape[0]} (the model's clip length T), given "
                         f"{context} + {frames} = {context + frames}")


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from argen.conditioning import batch_condition
    from argen.data.video_io import check_video_path, strip_path, write_strip, write_video
    from argen.metrics.commands import check_output_file
    from argen.metrics.video import frame_metrics, prediction_nats
    from argen.sampling.config import config_over_defaults

    output = Path(args.output)
    check_output_file(output, "-o")  # before any work: not a folder, in a folder that exists
    check_video_path(output, "-o")
    check_output_file(args.json, "--json", make_parents=True)
    model = load_run(args.run, device_arg(args.device)).eval()
    k, n_frames = args.context, args.frames
    check_frames(model, k, n_frames)
    ds = run_dataset(run_description(args.run), args.data, args.data_root, args.split, model)
    n = min(args.num, len(ds))
    items = [ds[i] for i in range(n)]
    x = torch.stack([it[0] for it in items]).to(model.device)
    cond = batch_condition(model.cond_spec, torch.stack([it[1] for it in items]).to(model.device))
    likelihood = getattr(type(model), "objective", "likelihood") == "likelihood"
    config = None
    if likelihood:
        config = config_over_defaults(getattr(model, "sampling_defaults", None),
                                      generator=torch.Generator().manual_seed(args.seed), temperature=args.temperature,
                                      top_k=args.top_k, top_p=args.top_p, naive=args.naive, progress=True)
    elif args.temperature is not None or args.top_k is not None or args.top_p is not None or args.naive:
        raise ValueError(f"{model.model_name!r} has no likelihood to sample from (objective "
                         f"{type(model).objective!r}): it predicts deterministically; expected no --temperature, "
                         "--top-k, --top-p or --naive")
    pred = model.predict(x[:, :k], cond, config)
    if tuple(pred.shape) != tuple(x.shape):
        raise ValueError(f"expected predict to return the whole clips {tuple(x.shape)}, given {tuple(pred.shape)}")
    end = k + n_frames
    if not torch.equal(pred[:, :k], x[:, :k]):
        raise ValueError("the model's predict changed the context frames it was given")
    truth, guess = x[:, k:end].cpu(), pred[:, k:end].cpu()
    record: dict[str, Any] = {"data": args.data or run_description(args.run).get("data"), "split": args.split,
                              "context": k, "frames": n_frames, "n": n, **frame_metrics(guess, truth, model.levels)}
    for key in ("mse", "psnr", "ssim"):
        record[f"mean_{key}"] = sum(record[key]) / len(record[key])
    token_unit = getattr(type(model), "likelihood_unit", "dim") == "token"  # a latent model: codes, not pixels
    if likelihood:
        record["likelihood"] = (model.future_token_nats(x, k, n_frames, cond) if token_unit
                                else prediction_nats(model, x, k, n_frames, cond))
    both = torch.stack([x[:, :end], pred[:, :end]], 1).flatten(0, 1).cpu()  # truth 0, prediction 0, truth 1, ...
    write_video(both, model.levels, output, nrow=2)
    strip = write_strip(both, model.levels, strip_path(output))
    print(f"argen: predicted {n_frames} frames after {k} true ones for {n} clips of {record['data']} {args.split}")
    print("  frame  " + "  ".join(f"{k + i + 1:>7d}" for i in range(n_frames)))
    for key, fmt in (("mse", "{:7.4f}"), ("psnr", "{:7.2f}"), ("ssim", "{:7.4f}")):
        print(f"  {key:5s}  " + "  ".join(fmt.format(v) for v in record[key]))
    print(f"  mean: MSE {record['mean_mse']:.5f}, PSNR {record['mean_psnr']:.2f} dB, SSIM {record['mean_ssim']:.4f}")
    if "likelihood" in record and token_unit:
        lk = record["likelihood"]
        first, stop = lk["code_frames"]
        given = {0: "no code frame (none lies wholly in the context)", 1: "code frame 1"}.get(first, f"code frames 1..{first}")
        print(f"  likelihood of the code frames {first + 1}..{stop} given {given}: {lk['bits_per_token']:.4f} "
              f"bits/token over {lk['tokens']} tokens (the prior's, of the tokenizer's codes)")
        if not lk["conditional"]:
            why = "the prior's order is not frame by frame" if not lk["frame_major"] else "the tokenizer is not causal in time"
            print(f"  note: {why}, so this sum is not -log p(future codes | past codes)")
    elif "likelihood" in record:
        lk = record["likelihood"]
        kind = "exact" if lk["exact"] else "a bound"
        print(f"  likelihood of the true frames {k + 1}..{end} given frames 1..{k}: {lk['nats_per_frame']:.2f} "
              f"nats/frame, {lk['bits_per_dim']:.4f} bits/dim ({kind})")
        if not lk["conditional"]:
            print("  note: the model's order is not frame by frame (subscale), so this sum of its conditionals "
                  "over the later frames is not -log p(future | past)")
    print(f"argen: wrote {output} (rows: truth | prediction) and {strip} (rows: truth, prediction per clip)")
    if args.json:
        from argen.fileio import atomic_write

        atomic_write(args.json, (json.dumps(record, indent=2) + "\n").encode())
    return EXIT_OK
