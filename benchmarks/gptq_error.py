"""GPTQ rounding against nearest rounding, out of sample, on the trained digits DiT; and its cost on FLUX sizes.

    python benchmarks/gptq_error.py       # CPU, a few minutes (on a GPU it also times FLUX-sized layers)
                                          # -> results/gptq_error.{md,json}

Each of the 36 quantized layers is quantized as the default W4A8 configuration does (auto codebook, ARS
rotation from the calibration of benchmarks/quality.py: 100 samples, noise seed 7). Its output error
|x (W_q - W)^T|^2 is then measured on the inputs of a second calibration run from other noise (seed 8), so a
rounding that overfits its calibration tokens shows it. Variants of the GPTQ rounding (formats/gptq.py): the
default (H over every calibration token, columns in decreasing H diagonal, 1% dampening), H of the 512-token
sample, the natural column order, 10% dampening.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import digits_dit as dd  # noqa: E402

import lrq_kernels as lrq  # noqa: E402
from lrq_kernels.formats.gptq import gptq_codes, hessian  # noqa: E402
from lrq_kernels.formats.weight import dequantize_codes  # noqa: E402
from lrq_kernels.integrations.diffusers import DIT_SKIP  # noqa: E402
from lrq_kernels.nn.model import _linears  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
VARIANTS = {   # name: (Hessian source, damp, act_order)
    "GPTQ (default)": ("all", 0.01, True),
    "H of the 512-token sample": ("sample", 0.01, True),
    "natural column order": ("all", 0.01, False),
    "dampening 10%": ("all", 0.10, True),
}


def digits_errors(device) -> dict:
    model, _ = dd.load_generator(device=device)

    def run(seed):
        return lambda m: dd.sample(m, dd.eval_labels(100), dd.initial_noise(100, seed))
    calib = lrq.calibrate(model, run(7), skip=DIT_SKIP)
    held_out = lrq.calibrate(model, run(8), skip=DIT_SKIP, max_tokens=2048, keep_hessian=False)
    cfg = lrq.QuantConfig(w_rounding="nearest")
    total = {"nearest": 0.0, **{v: 0.0 for v in VARIANTS}}
    layers = []
    for name, lin in _linears(model, DIT_SKIP):
        st = calib[name]
        q = lrq.QuantLinear.from_linear(lin, cfg, st)          # format, scales and rotation as the default
        rot, qw = q.rotation, q.quantized_weight()
        w_rot = rot.fold_into_weight(lin.weight.detach().float())
        x = rot.apply(held_out[name].tokens.to(device)).double()

        def err(w_q):
            return float((x @ (w_q.double() - w_rot.double()).t()).pow(2).sum())
        row = {"layer": name, "nearest": err(qw.dequantize())}
        for v, (src, damp, order) in VARIANTS.items():
            h = st.hessian if src == "all" else hessian(st.tokens)
            codes = gptq_codes(w_rot, qw.scales, qw.codebook, rot.apply_to_hessian(h.to(device)), None, damp, order)
            row[v] = err(dequantize_codes(codes, qw.scales, qw.codebook, None))
        for k in total:
            total[k] += row[k]
        layers.append(row)
    gains = {v: 10 * math.log10(total["nearest"] / total[v]) for v in VARIANTS}
    return {"gain_db": gains, "layers": layers, "calibration_tokens_sampled": int(st.tokens.shape[0]),
            "held_out_tokens": int(x.shape[0])}


def flux_times() -> list[dict]:
    """Seconds to quantize one FLUX-sized weight (auto codebook), nearest against GPTQ (8192 random tokens)."""
    out = []
    for n, k in ((3072, 3072), (12288, 3072), (3072, 12288)):
        w = torch.randn(n, k, device="cuda") * 0.02
        x = torch.randn(8192, k, device="cuda")
        row = {"N": n, "K": k}
        for label, h in (("nearest_s", None), ("gptq_s", x.t() @ x)):
            torch.cuda.synchronize()
            t0 = time.time()
            lrq.quantize_weight(w, 4, "auto", hessian=h)
            torch.cuda.synchronize()
            row[label] = round(time.time() - t0, 2)
        out.append(row)
    return out


def main():
    torch.set_grad_enabled(False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res = {"meta": {"device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU",
                    "torch": torch.__version__, "command": "python benchmarks/gptq_error.py",
                    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}}
    res["digits"] = digits_errors(device)
    if device.type == "cuda":
        res["flux_times"] = flux_times()
    lines = ["# GPTQ rounding against nearest rounding", "",
             f"{res['meta']['device']}, torch {res['meta']['torch']}, {res['meta']['date']}. Command: "
             f"`{res['meta']['command']}`.", "",
             "Digits DiT, W4A8 default (auto + ARS): the output error of its 36 layers, summed, on inputs of a "
             "calibration run from other noise; gain over nearest rounding in dB.", "",
             "| rounding | gain over nearest, dB |", "| --- | ---: |"]
    lines += [f"| {v} | {g:+.2f} |" for v, g in res["digits"]["gain_db"].items()]
    if "flux_times" in res:
        lines += ["", "Seconds to quantize one FLUX-sized weight (auto codebook, 8192 random tokens):", "",
                  "| N | K | nearest s | GPTQ s |", "| ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['N']} | {r['K']} | {r['nearest_s']} | {r['gptq_s']} |" for r in res["flux_times"]]
    os.makedirs(RESULTS, exist_ok=True)
    stem = os.path.join(RESULTS, "gptq_error")
    with open(stem + ".json", "w") as f:
        json.dump(res, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
