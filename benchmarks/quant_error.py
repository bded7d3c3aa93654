"""Quantization error table (CPU is enough): weight SQNR by format, activation SQNR by rotation.

    python benchmarks/quant_error.py            # writes benchmarks/results/quant_error.{md,json}

Weights: 1152 x 1152 matrices, Gaussian and Student-t (nu = 3, 5), each plain and with 4 outlier input channels (x4),
quantized per output channel by tlq / int / nf / learned / auto at 3 and 4 bits; SQNR of the dequantized matrix.
Activations: 2048 tokens x 1152 channels, Gaussian with (a) mild outliers (8 channels x4) and (b) salient
channels (8 channels x20..x100, their size moving between the 4 calibration calls as outliers do between
timesteps). ARS chooses its rotation on the first 1024 tokens; every rotation is scored on the other 1024:
SQNR of the activations after rotate -> per-token quantize -> dequantize -> inverse rotation.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lrq_kernels import Rotation, choose_rotation, quantize_weight, sqnr_db, stats_from_tokens  # noqa: E402
from lrq_kernels.reference import dequantize_tokens_ref, quantize_tokens_ref  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def weight_matrices(n=1152, k=1152, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, nu in (("gaussian", None), ("student-t nu=5", 5.0), ("student-t nu=3", 3.0)):
        if nu is None:
            w = torch.randn(n, k, generator=g)
        else:   # Student-t by its definition: N(0,1) / sqrt(chi2_nu / nu), with the seeded generator
            z = torch.randn(n, k, generator=g)
            chi2 = torch.randn(n, k, int(nu), generator=g).pow(2).sum(-1)
            w = z / (chi2 / nu).sqrt()
        out[name] = w * 0.02
        w = w.clone()
        cols = torch.randperm(k, generator=g)[:4]
        w[:, cols] *= 4.0
        out[name + " + 4 outlier channels"] = w * 0.02
    return out


def activations(kind, t=2048, k=1152, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, k, generator=g)
    ch = torch.randperm(k, generator=g)[:8]
    if kind == "mild outliers":
        x[:, ch] *= 4.0
    else:
        base = torch.linspace(20.0, 100.0, 8)
        for c in range(4):   # each quarter of the tokens is one "timestep" with its own outlier sizes
            wobble = 1.0 + 0.3 * torch.rand(8, generator=g)
            x[c * t // 4:(c + 1) * t // 4, ch] *= base * wobble
    return x


def act_sqnr(rot: Rotation, x, a_format, a_bits):
    xq = dequantize_tokens_ref(*quantize_tokens_ref(rot.apply(x), a_format, a_bits))
    return sqnr_db(x, rot.unapply(xq))


def w4(w_rot):
    return quantize_weight(w_rot, 4, "nf").dequantize()


def out_sqnr(rot: Rotation, x, w, a_format, a_bits):
    """SQNR of the layer output x W^T with rotated, quantized activations and W4 (nf) rotated weights."""
    xq = dequantize_tokens_ref(*quantize_tokens_ref(rot.apply(x), a_format, a_bits))
    return sqnr_db(x @ w.t(), xq @ w4(rot.fold_into_weight(w)).t())


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args()
    torch.manual_seed(0)
    rows_w, rows_a = [], []
    for name, w in weight_matrices().items():
        for bits in (4, 3):
            row = {"matrix": name, "bits": bits}
            for fmt in ("int", "nf", "tlq", "learned", "auto"):
                q = quantize_weight(w, bits, fmt)
                row[fmt] = round(sqnr_db(w, q.dequantize()), 3)
                if fmt == "auto":
                    row["auto_choice"] = q.fmt
                if fmt == "tlq":
                    row["tlq_grid"] = q.info["grid"]
            row["tlq_minus_int"] = round(row["tlq"] - row["int"], 3)
            row["auto_minus_int"] = round(row["auto"] - row["int"], 3)
            rows_w.append(row)
            print(row, flush=True)
    k = 1152
    weight = torch.randn(1152, k, generator=torch.Generator().manual_seed(2)) * 0.02
    for kind in ("mild outliers", "salient x20-100"):
        x = activations(kind)
        calib, test = x[:1024], x[1024:]
        stats = stats_from_tokens(calib, calls=4)
        for a_format, a_bits in (("fp8", 8), ("int", 8), ("int", 4)):
            ars = choose_rotation(stats, a_format, a_bits, 128)
            row = {"activations": kind, "format": f"{a_format}{a_bits}" if a_format == "int" else "fp8",
                   "none": act_sqnr(Rotation.identity(), test, a_format, a_bits),
                   "hadamard": act_sqnr(Rotation.hadamard(k, 128), test, a_format, a_bits),
                   "ars": act_sqnr(ars, test, a_format, a_bits),
                   "ars_choice": ars.kind if ars.kind != "ars" else
                   ("ars+smooth" if ars.channel_scale is not None else "ars-perm")}
            row = {kk: (round(v, 3) if isinstance(v, float) else v) for kk, v in row.items()}
            row["ars_minus_best"] = round(row["ars"] - max(row["none"], row["hadamard"]), 3)
            # the layer's output with W4 weights, ARS choosing by output error (what QuantLinear does)
            ars_w = choose_rotation(stats, a_format, a_bits, 128, weight=weight, quantize_w=w4)
            row["out_none"] = round(out_sqnr(Rotation.identity(), test, weight, a_format, a_bits), 3)
            row["out_hadamard"] = round(out_sqnr(Rotation.hadamard(k, 128), test, weight, a_format, a_bits), 3)
            row["out_ars"] = round(out_sqnr(ars_w, test, weight, a_format, a_bits), 3)
            row["out_ars_choice"] = ars_w.kind if ars_w.kind != "ars" else \
                ("ars+smooth" if ars_w.channel_scale is not None else "ars-perm")
            row["out_ars_minus_best"] = round(row["out_ars"] - max(row["out_none"], row["out_hadamard"]), 3)
            rows_a.append(row)
            print(row, flush=True)

    meta = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "command": "python benchmarks/quant_error.py"}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "quant_error.json"), "w") as f:
        json.dump({"meta": meta, "weights": rows_w, "activations": rows_a}, f, indent=1)
    lines = [f"# Quantization error (SQNR, dB; higher is better)", "",
             f"`{meta['command']}` on {meta['date']}, torch {meta['torch']}, CPU. Matrices and activations are "
             f"described in the script's docstring.", "",
             "## Weights (1152 x 1152, per-output-channel scales; outlier channels: 4 input columns x4)", "",
             "| matrix | bits | int | nf | tlq | learned | auto (choice) | tlq - int | auto - int | tlq grid |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows_w:
        lines.append(f"| {r['matrix']} | {r['bits']} | {r['int']:.2f} | {r['nf']:.2f} | {r['tlq']:.2f} | "
                     f"{r['learned']:.2f} | {r['auto']:.2f} ({r['auto_choice']}) | {r['tlq_minus_int']:+.2f} | "
                     f"{r['auto_minus_int']:+.2f} | {r['tlq_grid']} |")
    lines += ["", "## Activations (per-token quantization; 1024 calibration tokens, scored on 1024 others)", "",
              "Activation SQNR (after the inverse rotation). Smoothing looks free here because the weights pay "
              "for it; the second table charges them.", "",
              "| activations | format | none | block Hadamard (128) | ARS (choice) | ARS - best of the two |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows_a:
        lines.append(f"| {r['activations']} | {r['format']} | {r['none']:.2f} | {r['hadamard']:.2f} | "
                     f"{r['ars']:.2f} ({r['ars_choice']}) | {r['ars_minus_best']:+.2f} |")
    lines += ["", "Layer output SQNR (x W^T, W a 1152 x 1152 Gaussian matrix quantized to NF4 after its rotation; "
              "ARS choosing by this output error, as QuantLinear does):", "",
              "| activations | format | none | block Hadamard (128) | ARS (choice) | ARS - best of the two |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows_a:
        lines.append(f"| {r['activations']} | {r['format']} | {r['out_none']:.2f} | {r['out_hadamard']:.2f} | "
                     f"{r['out_ars']:.2f} ({r['out_ars_choice']}) | {r['out_ars_minus_best']:+.2f} |")
    with open(os.path.join(args.out, "quant_error.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
