"""bench_dit: one DiT transformer forward at the real config, random weights: bf16 against our W4A8, W3A8,
W4A16 and torchao's FP8 dynamic row-wise, each eager and compiled. `benchmarks/bench_dit.py` and
`python -m lrq_kernels bench` run it.

    python benchmarks/bench_dit.py                                   # GPU: all four models, every mode
    python benchmarks/bench_dit.py --models flux.1-dev --modes bf16 w4a8 --compile eager
    python benchmarks/bench_dit.py --tiny --out /tmp/r               # CPU: the tiny configs (mechanics only)
    python benchmarks/bench_dit.py --models flux.1-dev --modes bf16 w4a8 --compile eager --profile

Models (lrq_kernels.integrations.diffusers.MODELS): PixArt-Sigma 1024^2 batch 2, SD3.5-large 1024^2 batch 2,
FLUX.1-dev 1024^2 batch 1, Wan2.1-14B 480p 81 frames (32760 tokens) batch 1. Every linear weight is drawn from
N(0, 1/in_features) (build_model). Each model is built once on the GPU in bf16; each mode quantizes a copy.
Modes: bf16; w4a8 (the default QuantConfig: 4-bit auto format, FP8 tokens), w3a8, w4a16 (weight-only), all
uncalibrated (block Hadamard, nearest rounding) with the plan of `dit_plan` (embeddings and the final
projection in float, adaLN modulation weight-only; --adaln float keeps it in bf16); torchao-fp8
(Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()) on the same linears as w4a8's W·A8 ones).
Compiled: diffusers' compile_repeated_blocks(fullgraph=True) where the class names its repeated blocks (FLUX,
Wan), torch.compile of the whole model otherwise (PixArt, SD3); the row's "compile_how" says which.

Columns: ms a forward (CUDA events, median of --iters after 2 warm-up forwards), weight_gib (GPU memory the
model holds: allocated after it was made, minus before), peak_gib (weight_gib plus the most the forward
allocated above what was allocated before it), quant_s (seconds to quantize, synchronized), sqnr_db (output
against the bf16 model's, same inputs). Rows are merged into OUT/bench_dit.json by (model, mode, compile), and
OUT/bench_dit.md is the table of all of them; --profile writes OUT/bench_dit_profile_MODEL.md, one eager forward's GPU
time by kernel category for each mode that ran, side by side (torch.profiler).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import platform
import re
import statistics
import sys
import time

import torch

from . import QuantConfig, quantize_model, sqnr_db, weight_bytes
from .integrations.diffusers import MODELS, build_model, dit_plan, model_inputs
from .nn.model import _matches, skip_patterns

MODES = ("bf16", "w4a8", "w3a8", "w4a16", "torchao-fp8")
CONFIGS = {"w4a8": QuantConfig(w_bits=4, a_bits=8), "w3a8": QuantConfig(w_bits=3, a_bits=8),
           "w4a16": QuantConfig(w_bits=4, a_bits=16)}
COMMAND = "python benchmarks/bench_dit.py"   # how results name the command that made them
GIB = 2 ** 30


def meta(args) -> dict:
    cuda = torch.cuda.is_available()
    m = {"gpu": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
         "cuda": torch.version.cuda, "python": platform.python_version(),
         "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
         "command": " ".join([getattr(args, "command", COMMAND)] + list(getattr(args, "argv", sys.argv[1:])))}
    try:
        import triton
        m["triton"] = triton.__version__
    except ImportError:
        pass
    try:
        import torchao
        m["torchao"] = torchao.__version__
    except ImportError:
        pass
    return m


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def allocated() -> int:
    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0


def time_forward(fn, iters: int) -> tuple[float, float]:
    """(median ms of `iters` forwards after two warm-up ones, seconds the warm-up took: the compile time)."""
    t0 = time.perf_counter()
    fn()
    fn()
    sync()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(iters):
        if torch.cuda.is_available():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), warm


def make_mode(base, mode: str, adaln: str):
    """(a model of `mode` made from a copy of `base`, seconds spent quantizing it)."""
    if mode == "bf16":
        return base, 0.0
    model = copy.deepcopy(base)
    sync()
    t0 = time.perf_counter()
    if mode == "torchao-fp8":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
        plan = dit_plan(CONFIGS["w4a8"], adaln)
        keep = skip_patterns(plan["skip"]) + tuple(plan["overrides"])
        quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
                  filter_fn=lambda mod, fqn: isinstance(mod, torch.nn.Linear) and not _matches(fqn, keep))
    else:
        cfg = CONFIGS[mode]
        quantize_model(model, cfg, progress=False, **dit_plan(cfg, adaln))
    sync()
    return model, time.perf_counter() - t0


def compiled(model, how: str):
    if how == "repeated_blocks":
        model.compile_repeated_blocks(fullgraph=True)
        return model
    return torch.compile(model, fullgraph=False)


def bench_model(name: str, args, rows: list) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    before = allocated()
    t0 = time.perf_counter()
    base = build_model(name, device=device, dtype=torch.bfloat16, tiny=args.tiny)
    sync()
    base_bytes = allocated() - before if device == "cuda" else weight_bytes(base)
    print(f"{name}: built in {time.perf_counter() - t0:.1f} s, {base_bytes / GIB:.2f} GiB", flush=True)
    inputs = model_inputs(name, base, tiny=args.tiny, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        ref = base(**inputs)[0].float()
    how = "repeated_blocks" if getattr(base, "_repeated_blocks", None) else "whole_model"
    profiles = {}
    # bf16 last: compile_repeated_blocks compiles the model's blocks in place, and the other modes copy it
    for mode in [m for m in args.modes if m != "bf16"] + [m for m in args.modes if m == "bf16"]:
        if mode == "torchao-fp8" and not _has_torchao():
            print(f"{name} {mode}: torchao is not installed, row skipped", flush=True)
            continue
        t_before = allocated()
        model, quant_s = make_mode(base, mode, args.adaln)
        gc.collect()
        held = base_bytes if mode == "bf16" else (allocated() - t_before if device == "cuda"
                                                  else weight_bytes(model))
        for comp in args.compile_modes:
            fwd_model = compiled(model, how) if comp else model
            with torch.no_grad():
                call = lambda: fwd_model(**inputs)     # noqa: E731
                ms, warm = time_forward(call, args.iters)
                peak = None
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                    start = allocated()
                    out = call()[0].float()
                    sync()
                    peak = held + torch.cuda.max_memory_allocated() - start
                else:
                    out = call()[0].float()
            row = {"model": name, "mode": mode, "compile": comp, "ms": ms, "weight_gib": held / GIB,
                   "peak_gib": None if peak is None else peak / GIB, "quant_s": quant_s,
                   "sqnr_db": sqnr_db(ref, out), "adaln": None if mode == "bf16" else args.adaln,
                   "compile_how": how if comp else None, "warmup_s": warm, "tiny": args.tiny, **meta(args)}
            rows.append(row)
            write(rows, args.out)   # after every row: a run cut short keeps what it measured
            print(f"{name:13s} {mode:12s} {'compiled' if comp else 'eager':8s} {ms:9.2f} ms  weights "
                  f"{row['weight_gib']:.2f} GiB  peak {row['peak_gib'] or 0:.2f} GiB  quant {quant_s:.1f} s  "
                  f"SQNR {row['sqnr_db']:.1f} dB  warm-up {warm:.1f} s", flush=True)
            del fwd_model
            if comp:
                torch._dynamo.reset()
        if args.profile:
            profiles[mode] = profile(model, inputs, args)
        if model is not base:
            del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    if profiles:
        write_profile(name, profiles, args)
    del base, ref
    gc.collect()


def _has_torchao() -> bool:
    try:
        import torchao  # noqa: F401
        return True
    except ImportError:
        return False


CATEGORIES = (   # first match wins, on the kernel's name
    ("rotate+quantize", r"rotate_quant"),
    ("weight decode", r"decode_weight|unrotate_weight"),
    ("our GEMMs", r"gemm_wa8|gemv_a16|_gemm_kernel"),
    # cuBLAS names its FP8 GEMMs nvjet_sm90_qq* on Hopper (two e4m3 operands), others by the type
    ("cuBLAS FP8 GEMM (decoded weights)", r"nvjet_sm\d+_qq|(gemm|xmma|cutlass).*(e4m3|f8|fp8)|(e4m3|f8|fp8).*gemm"),
    ("attention", r"flash|fmha|attention|sdpa|cudnn"),
    ("bf16 GEMM (float layers)", r"nvjet|gemm|xmma|cutlass|ampere|sm90"),
)


def profile(model, inputs, args) -> tuple[dict, dict]:
    """One eager forward under torch.profiler: (GPU ms by kernel category (CATEGORIES; the rest is 'other'),
    GPU ms by (category, kernel name))."""
    from torch.profiler import ProfilerActivity
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.no_grad():
        model(**inputs)
        sync()
        with torch.profiler.profile(activities=acts) as prof:
            model(**inputs)
            sync()
    trace = os.path.join(args.out, "_trace.json")
    prof.export_chrome_trace(trace)
    with open(trace) as f:
        events = json.load(f)["traceEvents"]
    os.remove(trace)
    totals, kernels = {}, {}
    for e in events:
        if e.get("cat") != "kernel":
            continue
        cat = next((c for c, pat in CATEGORIES if re.search(pat, e["name"], re.I)), "other")
        totals[cat] = totals.get(cat, 0.0) + e["dur"] / 1e3
        key = (cat, e["name"][:90])
        kernels[key] = kernels.get(key, 0.0) + e["dur"] / 1e3
    return totals, kernels


def write_profile(name: str, profiles: dict, args) -> None:
    """OUT/bench_dit_profile_NAME.md: the profiled modes' GPU time by category side by side, and each mode's
    largest kernels."""
    modes = [m for m in MODES if m in profiles]
    m = meta(args)
    cats = sorted({c for mode in modes for c in profiles[mode][0]}, key=lambda c: -profiles[modes[-1]][0].get(c, 0))
    lines = [f"# One {name} eager forward by kernel category: {', '.join(modes)} ({m['gpu']}, {m['date']})", "",
             f"`{m['command']}`; torch {m['torch']}, CUDA {m['cuda']}. GPU time of every kernel of one eager forward "
             f"(torch.profiler), summed by category, ms.", "",
             "| category | " + " | ".join(modes) + " |", "| --- |" + " ---: |" * len(modes)]
    for cat in cats:
        lines.append(f"| {cat} | " + " | ".join(f"{profiles[mode][0].get(cat, 0.0):.2f}" for mode in modes) + " |")
    lines.append("| all kernels | " + " | ".join(f"{sum(profiles[mode][0].values()):.2f}" for mode in modes) + " |")
    for mode in modes:
        lines += ["", f"Largest kernels, {mode}:", "", "| category | kernel | ms |", "| --- | --- | ---: |"]
        for (cat, kname), ms in sorted(profiles[mode][1].items(), key=lambda t: -t[1])[:15]:
            lines.append(f"| {cat} | `{kname}` | {ms:.2f} |")
    with open(os.path.join(args.out, f"bench_dit_profile_{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[:6 + len(cats) + 1]), flush=True)


def write(rows: list, out: str) -> None:
    path = os.path.join(out, "bench_dit.json")
    old = []
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    key = lambda r: (r["model"], r["mode"], r["compile"])   # noqa: E731
    new = {key(r) for r in rows}
    merged = [r for r in old if key(r) not in new] + rows
    order = {m: i for i, m in enumerate(MODELS)}
    merged.sort(key=lambda r: (order.get(r["model"], 99), r["compile"], MODES.index(r["mode"])))
    with open(path, "w") as f:
        json.dump(merged, f, indent=1)
    group = lambda r: (r["model"], r["compile"])   # noqa: E731
    base = {group(r): r["ms"] for r in merged if r["mode"] == "bf16"}
    ao = {group(r): r["ms"] for r in merged if r["mode"] == "torchao-fp8"}
    lines = ["| model | mode | compiled | ms | × bf16 | × torchao FP8 | weights GiB | peak GiB | quantize s | "
             "SQNR dB | GPU, date |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in merged:
        k = group(r)
        sp = f"{base[k] / r['ms']:.2f}×" if k in base else "–"
        sa = f"{ao[k] / r['ms']:.2f}×" if k in ao else "–"
        peak = "–" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        sq = "–" if r["mode"] == "bf16" else f"{r['sqnr_db']:.1f}"
        lines.append(f"| {r['model']}{' (tiny)' if r.get('tiny') else ''} | {r['mode']} | "
                     f"{r['compile_how'] if r['compile'] else 'eager'} | "
                     f"{r['ms']:.1f} | {sp} | {sa} | "
                     f"{r['weight_gib']:.2f} | {peak} | {r['quant_s']:.1f} | {sq} | {r['gpu']}, {r['date']} |")
    with open(os.path.join(out, "bench_dit.md"), "w") as f:
        f.write("# bench_dit: one transformer forward at the real config, random weights\n\n"
                "Each row's command, versions and date are in bench_dit.json. × columns: the same model and "
                "compile mode's bf16 (or torchao) time over this row's.\n\n" + "\n".join(lines) + "\n")


def main(argv=None, command: str = COMMAND) -> list:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--compile", default="both", choices=("eager", "compiled", "both"))
    ap.add_argument("--adaln", default="weight-only", choices=("weight-only", "float"),
                    help="the adaLN modulation linears: quantized weight-only (default) or kept in bf16")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="the tiny configs (CPU tests of the mechanics)")
    ap.add_argument("--profile", action="store_true", help="profile one eager forward of each mode by kernel category")
    ap.add_argument("--out", default="benchmarks/results" if os.path.isdir("benchmarks/results") else "bench_results",
                    help="where bench_dit.json and .md go (default benchmarks/results in a checkout)")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.command = command
    args.compile_modes = {"eager": [False], "compiled": [True], "both": [False, True]}[args.compile]
    if not torch.cuda.is_available() and not args.tiny:
        ap.error("the real configs need a GPU; on a CPU pass --tiny")
    os.makedirs(args.out, exist_ok=True)
    rows = []
    with torch.no_grad():
        for name in args.models:
            bench_model(name, args, rows)
    return rows


if __name__ == "__main__":
    main()
