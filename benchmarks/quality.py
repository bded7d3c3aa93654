"""Quality of quantized samples: the trained digits DiT (benchmarks/digits_dit.py) under every configuration.

    python benchmarks/quality.py                 # GPU: the whole table, 2000 samples each  -> results/quality.*
    python benchmarks/quality.py --cpu-subset    # CPU: 9 rows, 200 samples each (~17 min)  -> results/quality_cpu.*

Rows: float; W8A8 (a simulated anchor, see W8A8Linear); {W4A8, W4A4, W3A8, W3A4} x weight format {int, nf,
tlq, auto} x rotation {none, block Hadamard, ARS} x weight rounding {GPTQ on the calibration tokens, nearest}.
Every row samples the same labels (each class equally often) from the same initial noise with the same DDIM
steps, so PSNR and SSIM compare each quantized sample with the float model's sample of the same noise. A second
float run from other noise measures how much the accuracy and the Frechet distance move by sampling alone. ARS
and GPTQ use one calibration of the float model (its own noise). A8 is FP8 e4m3 per token, A4 INT4 levels per
token; weights are per output channel. Linears kept in float: the adaLN, timestep and final projections
(lrq_kernels.integrations.diffusers.DIT_SKIP).

Beside the table: per quantized layer, the weights' kurtosis and the activations' salient channels, and what
the default configuration (W4A8, auto + ARS) chose there.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import sys
import time
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import digits_dit as dd  # noqa: E402

import lrq_kernels as lrq  # noqa: E402
from lrq_kernels.integrations.diffusers import DIT_SKIP  # noqa: E402
from lrq_kernels.nn.model import _linears, _set_submodule  # noqa: E402  (quantize_model's own walk)
from lrq_kernels.reference.act_quant import dequantize_tokens_ref, quantize_tokens_ref  # noqa: E402
from lrq_kernels.rotation.ars import SALIENT_RATIO  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PRECISIONS = {"W4A8": (4, 8, "fp8"), "W4A4": (4, 4, "int"), "W3A8": (3, 8, "fp8"), "W3A4": (3, 4, "int")}
FORMATS = ("int", "nf", "tlq", "auto")
ROTATIONS = ("none", "hadamard", "ars")
ROUNDINGS = ("gptq", "nearest")
DEFAULT = ("auto", "ars", "gptq")          # QuantConfig's defaults
BASELINE = ("int", "none", "nearest")      # uniform INT, no rotation, nearest rounding
CPU_SUBSET = [(p, *c) for p in ("W4A8", "W4A4", "W3A8") for c in (DEFAULT, ("auto", "ars", "nearest"), BASELINE)]


class W8A8Linear(nn.Module):
    """The W8A8 anchor row, simulated in PyTorch (the library's weights are 3 or 4 bits): INT8 weights with an
    absmax scale per output channel, INT8 tokens with an absmax scale per token, no rotation."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        s = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
        self.register_buffer("weight", torch.round(w / s).clamp(-127, 127) * s)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x):
        x2 = x.reshape(-1, x.shape[-1])
        xq = dequantize_tokens_ref(*quantize_tokens_ref(x2, "int", 8)).to(x.dtype)
        return F.linear(xq, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype)
                        ).reshape(*x.shape[:-1], -1)


def quantized_linears(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, lrq.QuantLinear)}


def rotation_label(m: lrq.QuantLinear) -> str:
    if m.rotation_kind != "ars":
        return m.rotation_kind
    return "ars+smooth" if m.channel_scale is not None else "ars-perm"


def counts(values) -> dict:
    return dict(sorted(Counter(values).items()))


def make_w8a8(model):
    """A copy of `model` with W8A8Linear in place of every linear quantize_model would replace."""
    q = copy.deepcopy(model)
    for name, lin in list(_linears(q, DIT_SKIP)):
        _set_submodule(q, name, W8A8Linear(lin))
    return q


def kurtosis(t: torch.Tensor) -> float:
    t = t.double().flatten()
    z = t - t.mean()
    return float(z.pow(4).mean() / z.pow(2).mean().pow(2) - 3)


def layer_statistics(model, calib: dict, default_model) -> list[dict]:
    """Per quantized layer: weight excess kurtosis (all entries, and the median over output channels), the
    largest |w| in standard deviations, salient input channels (absmax > SALIENT_RATIO x the median channel
    absmax), the largest channel absmax over the median, the timestep fluctuation of the channel absmax, and
    the default configuration's choice of format and rotation."""
    chosen = quantized_linears(default_model)
    rows = []
    for name, lin in _linears(model, DIT_SKIP):
        w = lin.weight.detach().double().cpu()
        zr = w - w.mean(dim=1, keepdim=True)
        row_k = (zr.pow(4).mean(dim=1) / zr.pow(2).mean(dim=1).pow(2) - 3).median()
        st = calib[name]
        fl = st.fluctuation()
        q = chosen[name]
        rows.append({"layer": name, "k": lin.in_features, "n": lin.out_features,
                     "w_kurtosis": kurtosis(w), "w_row_kurtosis_median": float(row_k),
                     "w_max_sigmas": float(w.abs().max() / w.std()),
                     "salient_channels": fl["salient_channels"],
                     "act_absmax_max_over_median": float(st.absmax.max() / st.absmax.median().clamp_min(1e-12)),
                     "timestep_cv_mean": fl["timestep_cv_mean"], "timestep_cv_salient": fl["timestep_cv_salient"],
                     "default_format": q.w_format, "default_rotation": rotation_label(q),
                     "gptq_gain_db": q.quant_info.get("gptq_gain_db"),
                     "rotation_scores": q.rotation_note})
    return rows


def run_row(name, model, labels, noise, args, net, real_mu, real_cov, reference):
    t0 = time.time()
    imgs = dd.sample(model, labels, noise, steps=args.steps, guidance=args.guidance)
    m = dd.sample_metrics(imgs, labels, net, real_mu, real_cov, reference)
    m["sample_s"] = round(time.time() - t0, 1)
    ql = quantized_linears(model)
    if ql:
        m["formats"] = counts(q.w_format for q in ql.values())
        m["rotations"] = counts(rotation_label(q) for q in ql.values())
    ps = f", to float {m['fd_to_float']:.3f}, PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}" if "psnr" in m else ""
    print(f"{name:28s} accuracy {m['accuracy']:6.2f}%  FD {m['fd']:8.3f}{ps}  ({m['sample_s']} s)", flush=True)
    return imgs, m


def _fmt(v, spec):
    return "—" if v is None else (f"{v:{spec}}" if math.isfinite(v) else "inf")


def write_markdown(path, res):
    meta, rows = res["meta"], res["rows"]
    fl = res["float"]
    lines = [f"# Quantized sample quality: the digits DiT ({meta['mode']})", "",
             f"{meta['device']}, torch {meta['torch']}, {meta['date']}. Command: `{meta['command']}`.", "",
             f"{meta['samples']} samples per row ({meta['samples'] // 10} per class), {meta['steps']} DDIM steps, "
             f"guidance {meta['guidance']}, noise seed {meta['noise_seed']} for every row. Accuracy: the judge's "
             f"(test accuracy {meta['judge_test_accuracy']:.2f}%) agreement with the intended label. FD: Frechet "
             f"distance to the real digits in the judge's 64-d features (held-out real images against all: "
             f"{meta['judge_fd_test_vs_all']:.1f} with 297 images). PSNR/SSIM: against the float model's sample "
             f"of the same noise; FD to float: between a row's samples and the float model's. Weights per output "
             f"channel; A8 = FP8 e4m3 per token, A4 = INT4 levels per token. Rounding: GPTQ against the "
             f"calibration tokens of each layer (formats/gptq.py), or each weight to its nearest level.", ""]
    fl2 = res["float_other_noise"]
    lines += [f"Float model: accuracy **{fl['accuracy']:.2f}%**, FD **{fl['fd']:.3f}**. The same model from other "
              f"noise: {fl2['accuracy']:.2f}%, FD {fl2['fd']:.3f} (sampling noise of the metrics).", ""]
    lines += ["## Targets", ""]
    for c in res["checks"]:
        lines.append(f"- {c['what']}: **{'met' if c['met'] else 'not met'}** ({c['detail']})")
    lines += ["", "## Every row", "",
              "| precision | rounding | weights | rotation | accuracy % | FD | FD to float | PSNR dB | SSIM | "
              "formats chosen | rotations chosen |",
              "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        f = ", ".join(f"{k} {v}" for k, v in r.get("formats", {}).items())
        ro = ", ".join(f"{k} {v}" for k, v in r.get("rotations", {}).items())
        mark = " **(default)**" if (r["format"], r["rotation"], r["rounding"]) == DEFAULT else ""
        lines.append(f"| {r['precision']} | {r['rounding']} | {r['format']} | {r['rotation']}{mark} | "
                     f"{r['accuracy']:.2f} | "
                     f"{r['fd']:.3f} | {_fmt(r.get('fd_to_float'), '.3f')} | {_fmt(r.get('psnr'), '.2f')} | {_fmt(r.get('ssim'), '.4f')} | {f} | {ro} |")
    if res.get("layers"):
        lines += ["", "## The trained model's statistics (default W4A8 choices)", "",
                  f"Salient channels: input channels whose calibration absmax exceeds {SALIENT_RATIO:g}x the "
                  "median channel's. Kurtosis: excess (0 for a Gaussian).", "",
                  "| layer | K→N | weight kurtosis | median row kurtosis | max abs(w) / std | salient channels | "
                  "max / median channel absmax | timestep CV | format | rotation | GPTQ gain dB (calibration inputs) |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |"]
        for s in res["layers"]:
            lines.append(f"| {s['layer'].replace('transformer_blocks.', 'b')} | {s['k']}→{s['n']} | "
                         f"{s['w_kurtosis']:.2f} | {s['w_row_kurtosis_median']:.2f} | {s['w_max_sigmas']:.1f} | "
                         f"{s['salient_channels']} | {s['act_absmax_max_over_median']:.1f} | "
                         f"{s['timestep_cv_mean']:.2f} | {s['default_format']} | {s['default_rotation']} | "
                         f"{_fmt(s.get('gptq_gain_db'), '.1f')} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def checks(res) -> list[dict]:
    """The issue's targets, computed from the rows of this run."""
    fl = res["float"]
    by = {(r["precision"], r["format"], r["rotation"], r["rounding"]): r for r in res["rows"]}
    out = []
    d = by.get(("W4A8", *DEFAULT))
    if d:
        acc_ok = d["accuracy"] >= fl["accuracy"] - 1.0
        fd_ok = d["fd"] <= 1.1 * fl["fd"]
        out.append({"what": "W4A8 default (auto + ARS + GPTQ): accuracy within 1 point of float and FD within 10%",
                    "met": acc_ok and fd_ok,
                    "detail": f"accuracy {d['accuracy']:.2f}% vs float {fl['accuracy']:.2f}%; "
                              f"FD {d['fd']:.3f} vs float {fl['fd']:.3f} ({100 * (d['fd'] / fl['fd'] - 1):+.1f}%)"})
    for p in ("W4A4", "W3A8"):
        d, b = by.get((p, *DEFAULT)), by.get((p, *BASELINE))
        if d and b:     # "beats": strictly better on both; a tie on accuracy does not count
            met = d["accuracy"] > b["accuracy"] and d["fd"] < b["fd"]
            out.append({"what": f"{p}: the default (auto + ARS + GPTQ) beats int + none + nearest rounding on "
                                f"accuracy and FD", "met": met,
                        "detail": f"accuracy {d['accuracy']:.2f}% vs {b['accuracy']:.2f}%, "
                                  f"FD {d['fd']:.3f} vs {b['fd']:.3f}"})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-subset", action="store_true", help="9 rows, 200 samples: what a CPU does in ~17 min")
    ap.add_argument("--samples", type=int, default=None, help="default 2000, or 200 with --cpu-subset")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--device", default=None, help="default cuda when there is one (cpu with --cpu-subset)")
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS),
                    help="only these precisions' rows (the full table has all four)")
    ap.add_argument("--roundings", nargs="+", default=list(ROUNDINGS), choices=list(ROUNDINGS),
                    help="only these weight roundings' rows (the full table has both)")
    ap.add_argument("--noise-seed", type=int, default=1234, help="seed of the evaluation noise (the same every row)")
    ap.add_argument("--out", default=None, help="results file stem (default results/quality or quality_cpu)")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.cpu_subset else "cpu"))
    n = args.samples or (200 if args.cpu_subset else 2000)
    if n % 10:
        raise ValueError(f"--samples must be a multiple of 10 (every class equally often), got {n}")
    stem = args.out or os.path.join(RESULTS, "quality_cpu" if args.cpu_subset else "quality")
    # no TF32 in the float model's convolutions, so that GPU and CPU runs compute the same float32 math
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_grad_enabled(False)
    t_start = time.time()

    model, ginfo = dd.load_generator(device=device)
    net, real_mu, real_cov, cinfo = dd.load_classifier(device=device)
    labels, noise_seed = dd.eval_labels(n), args.noise_seed
    noise = dd.initial_noise(n, noise_seed)
    import triton
    res = {"meta": {"mode": "CPU subset" if args.cpu_subset else "full table", "samples": n, "steps": args.steps,
                    "guidance": args.guidance, "noise_seed": noise_seed,
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
                    "torch": torch.__version__, "triton": triton.__version__,
                    "command": "python benchmarks/quality.py" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
                    "judge_test_accuracy": cinfo["test_accuracy"],
                    "judge_fd_test_vs_all": cinfo["fd_test_split_vs_all"],
                    "generator_training": {k: ginfo.get(k) for k in ("steps", "date", "device", "final_loss")}},
           "rows": [], "layers": []}

    def row(name, m, reference):
        return run_row(name, m, labels, noise, args, net, real_mu, real_cov, reference)

    ref, res["float"] = row("float", model, None)
    _, res["float_other_noise"] = run_row("float (other noise)", model, labels, dd.initial_noise(n, noise_seed + 1),
                                          args, net, real_mu, real_cov, None)
    t0 = time.time()
    calib = lrq.calibrate(model, lambda m: dd.sample(m, dd.eval_labels(100), dd.initial_noise(100, 7),
                                                     steps=args.steps, guidance=args.guidance), skip=DIT_SKIP)
    print(f"calibration: {len(calib)} layers, {time.time() - t0:.1f} s", flush=True)

    _, m = row("W8A8 int8/int8 (simulated)", make_w8a8(model), ref)
    res["rows"].append({"precision": "W8A8", "format": "int", "rotation": "none", "rounding": "nearest", **m})
    todo = CPU_SUBSET if args.cpu_subset else [(p, f, r, g) for p in PRECISIONS for g in ROUNDINGS
                                               for f in FORMATS for r in ROTATIONS]
    todo = [t for t in todo if t[0] in args.precisions and t[3] in args.roundings]
    for p, fmt, rot, rounding in todo:
        w_bits, a_bits, a_format = PRECISIONS[p]
        cfg = lrq.QuantConfig(w_bits=w_bits, a_bits=a_bits, w_format=fmt, a_format=a_format, rotation=rot,
                              w_rounding=rounding)
        t0 = time.time()
        q = lrq.quantize_model(copy.deepcopy(model), cfg, calib=calib, skip=DIT_SKIP, progress=False)
        tq = time.time() - t0
        _, m = row(f"{p} {fmt} {rot} {rounding}", q, ref)
        m["quantize_s"] = round(tq, 1)
        res["rows"].append({"precision": p, "format": fmt, "rotation": rot, "rounding": rounding, **m})
        if (p, fmt, rot, rounding) == ("W4A8", *DEFAULT):
            res["layers"] = layer_statistics(model, calib, q)
        save(stem, res, t_start)          # after every row, so that a cut-off run leaves its partial table

    for c in res["checks"]:
        print(f"{'MET    ' if c['met'] else 'NOT MET'} {c['what']}: {c['detail']}")
    print(f"wrote {stem}.json and {stem}.md ({res['meta']['total_s']} s)")
    return res


def save(stem, res, t_start):
    res["meta"]["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    res["meta"]["total_s"] = round(time.time() - t_start, 1)
    res["checks"] = checks(res)
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    with open(stem + ".json", "w") as f:
        json.dump(res, f, indent=1)
    write_markdown(stem + ".md", res)


if __name__ == "__main__":
    main()
