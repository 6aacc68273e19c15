"""Lossless compression with trained models on the embedded test set, next to PNG and gzip.

For each run directory: the model's negative log-likelihood in bits (the ideal code length), the
.argz size (payload and header), PNG (one file per image, imageio's default zlib level) and gzip
(level 9: per image, and the whole set as one stream), plus encode and decode images/s.

    python benchmarks/compress.py runs/bench-bpd/pixelcnn_pp runs/bench-bpd/gated_pixelcnn --n 100
"""
from __future__ import annotations

import argparse
import gzip
import math
import time

import imageio.v3 as iio
import numpy as np
import torch

import argen
from argen.checkpoint import read_description
from argen.compress import compress_arrays, decompress_arrays
from argen.data import load_dataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--n", type=int, default=100, help="test images (default: 100)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", default=None, help="data set (default: the one the run recorded, else mnist)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | images | NLL bits/dim | .argz bits/dim | payload vs NLL | header bytes | PNG bits/dim "
          "| gzip bits/dim (per image / whole set) | encode img/s | decode img/s | path |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        model = argen.load(run).eval()
        data = load_dataset(args.data or read_description(run).get("data") or "mnist", "test")
        idx = np.linspace(0, len(data) - 1, args.n).astype(int)  # spread over classes
        imgs = np.stack([data[int(i)][0].numpy() for i in idx]).astype(np.uint8)
        dims = imgs.size
        with torch.no_grad():
            nll_bits = -sum(float(model.log_prob(torch.as_tensor(b, dtype=torch.long)).double().sum())
                            for b in np.array_split(imgs, max(1, len(imgs) // args.batch_size))) / math.log(2)
        t0 = time.perf_counter()
        f = compress_arrays(model, imgs, batch_size=args.batch_size)
        enc_s = time.perf_counter() - t0
        data_bytes = f.to_bytes()
        t0 = time.perf_counter()
        out, _ = decompress_arrays(model, data_bytes)
        dec_s = time.perf_counter() - t0
        assert np.array_equal(out, imgs), "round trip failed"
        png = sum(len(iio.imwrite("<bytes>", im.transpose(1, 2, 0).squeeze(-1) if im.shape[0] == 1 else im.transpose(1, 2, 0),
                                  extension=".png")) for im in imgs)
        gz_each = sum(len(gzip.compress(im.tobytes(), 9)) for im in imgs)
        gz_all = len(gzip.compress(imgs.tobytes(), 9))
        argz_bits = 8 * len(data_bytes)
        payload_bits = 32 * len(f.words)
        header_bytes = len(data_bytes) - 4 * len(f.words)
        print(f"| {model.model_name} | {len(imgs)} | {nll_bits / dims:.4f} | {argz_bits / dims:.4f} | "
              f"{payload_bits - nll_bits:+.0f} bits ({100 * (payload_bits / nll_bits - 1):+.3f}%) | {header_bytes} | "
              f"{8 * png / dims:.3f} | "
              f"{8 * gz_each / dims:.3f} / {8 * gz_all / dims:.3f} | {len(imgs) / enc_s:.1f} | {len(imgs) / dec_s:.2f} | "
              f"{f.header['path']} |", flush=True)


if __name__ == "__main__":
    main()
