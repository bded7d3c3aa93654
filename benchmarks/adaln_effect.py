"""What quantizing each group of DiT linears costs in sample quality, to choose what stays in float.

    python benchmarks/adaln_effect.py            # CPU, about 10 minutes; --samples, --steps to change

On the shipped digits DiT (benchmarks/assets/digits_dit, calibrated as benchmarks/quality.py does), W4A8 and
W3A8 with the default config (auto + ARS + GPTQ) under three plans: DIT_SKIP (adaLN modulation and final
projection in float), dit_plan's default (adaLN quantized weight-only at the same bits), and everything
quantized but the embeddings (adaLN weight-only and the final projection W·A8 too). Accuracy, FD to the real
digits, FD to the float samples and PSNR against them, from the same noise. Writes results/adaln_effect.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import digits_dit as dd  # noqa: E402

import lrq_kernels as lrq  # noqa: E402
from lrq_kernels._threads import configure_cpu_threads  # noqa: E402
from lrq_kernels.integrations.diffusers import DIT_FLOAT, DIT_SKIP, dit_plan  # noqa: E402

FINAL = ("proj_out*", "*proj_out_1", "*proj_out_2")


def plans(cfg):
    wo = dit_plan(cfg)
    return {"adaLN + final projection in float (DIT_SKIP)": dict(skip=DIT_SKIP, overrides={}),
            "adaLN weight-only (dit_plan default)": wo,
            "adaLN weight-only, final projection quantized": dict(
                skip=tuple(p for p in DIT_FLOAT if p not in FINAL), overrides=wo["overrides"])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    threads = configure_cpu_threads()
    torch.set_grad_enabled(False)
    t_start = time.time()
    model, _ = dd.load_generator()
    net, mu, cov, _ = dd.load_classifier()
    labels, noise = dd.eval_labels(args.samples), dd.initial_noise(args.samples, 1234)
    ref = dd.sample(model, labels, noise, steps=args.steps)
    rows = [{"precision": "float", "plan": "", "quantized": 0, **dd.sample_metrics(ref, labels, net, mu, cov)}]
    calib_skip = tuple(p for p in DIT_FLOAT if p not in FINAL)     # record every linear any plan quantizes
    calib = lrq.calibrate(model, lambda m: dd.sample(m, dd.eval_labels(100), dd.initial_noise(100, 7),
                                                     steps=args.steps), skip=calib_skip)
    for prec, (w_bits, a_bits) in {"W4A8": (4, 8), "W3A8": (3, 8)}.items():
        cfg = lrq.QuantConfig(w_bits=w_bits, a_bits=a_bits)
        for name, plan in plans(cfg).items():
            q = lrq.quantize_model(copy.deepcopy(model), cfg, calib=calib, progress=False, **plan)
            out = dd.sample(q, labels, noise, steps=args.steps)
            n = sum(isinstance(m, lrq.QuantLinear) for m in q.modules())
            rows.append({"precision": prec, "plan": name, "quantized": n, "weight_bytes": lrq.weight_bytes(q),
                         **dd.sample_metrics(out, labels, net, mu, cov, reference=ref)})
            r = rows[-1]
            print(f"{prec} {name}: {n} layers, acc {r['accuracy']:.1f}%, FD {r['fd']:.2f}, FD to float "
                  f"{r['fd_to_float']:.3f}, PSNR {r['psnr']:.2f} dB", flush=True)
    meta = {"command": "python benchmarks/adaln_effect.py" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
            "device": "CPU", "threads": threads, "torch": torch.__version__, "samples": args.samples,
            "steps": args.steps, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "total_s": round(time.time() - t_start, 1)}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "adaln_effect.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    lines = [f"# Which DiT linears stay in float: the digits DiT ({meta['date']}, {meta['device']}, torch "
             f"{meta['torch']})", "", f"`{meta['command']}`; {args.samples} samples from the same noise, "
             f"{args.steps} DDIM steps; default config (auto + ARS + GPTQ).", "",
             "| precision | plan | quantized linears | accuracy | FD | FD to float | PSNR dB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        extra = ("–", "–") if r["precision"] == "float" else (f"{r['fd_to_float']:.3f}", f"{r['psnr']:.2f}")
        lines.append(f"| {r['precision']} | {r['plan']} | {r['quantized']} | {r['accuracy']:.1f}% | {r['fd']:.2f} | "
                     f"{extra[0]} | {extra[1]} |")
    with open(os.path.join(args.out, "adaln_effect.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
