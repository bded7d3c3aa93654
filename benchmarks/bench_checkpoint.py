"""Quantize a real-config DiT on the GPU, save its checkpoint, and load it without the float weights.

    python benchmarks/bench_checkpoint.py --model flux.1-dev            # GPU
    python benchmarks/bench_checkpoint.py --model pixart-sigma --tiny   # CPU: the tiny config (mechanics only)

Steps, each timed: build the model in bf16 on the device with random weights (build_model), quantize it
uncalibrated with the default QuantConfig and dit_plan (quant_s, synchronized), save_quantized (save_s, file
size), then in a fresh process load_quantized_model(path, device, dtype=bf16) (load_s). That process reports the
peak host memory of the load (VmHWM after it, minus VmRSS before it, from /proc/self/status) and the peak GPU
memory (torch.cuda.max_memory_allocated), both also as a ratio to the file's size, and whether the loaded model's
output equals the quantized model's bit for bit. Writes OUT/bench_checkpoint.json and .md (one row a model,
merged).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import lrq_kernels as lrq  # noqa: E402
from lrq_kernels.benchmark import meta, sync  # noqa: E402
from lrq_kernels.integrations.diffusers import build_model, dit_plan, model_inputs  # noqa: E402

GIB = 2 ** 30


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def load_child(path: str, device: str, out_file: str, name: str, tiny: bool) -> None:
    """Runs in the fresh process: load, measure, and save the output for the bit-for-bit check."""
    if device == "cuda":
        torch.zeros(1, device="cuda")          # the CUDA context before the baseline
    rss0 = _status_kib("VmRSS")
    t0 = time.perf_counter()
    model = lrq.load_quantized_model(path, device=device, dtype=torch.bfloat16)
    sync()
    load_s = time.perf_counter() - t0
    res = {"load_s": load_s, "load_host_peak_gib": (_status_kib("VmHWM") - rss0) / 2 ** 20,
           "load_gpu_peak_gib": torch.cuda.max_memory_allocated() / GIB if device == "cuda" else None}
    with torch.no_grad():
        out = model(**model_inputs(name, model, tiny=tiny, device=device))[0]
    torch.save(out.cpu(), out_file + ".pt")
    with open(out_file, "w") as f:
        json.dump(res, f)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="flux.1-dev")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--dir", default=None, help="where the checkpoint is written (default: a temporary folder)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--child", nargs=2, metavar=("PATH", "RESULT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.command, args.argv = "python benchmarks/bench_checkpoint.py", list(sys.argv[1:] if argv is None else argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        load_child(args.child[0], device, args.child[1], args.model, args.tiny)
        return {}
    if device == "cpu" and not args.tiny:
        ap.error("the real configs need a GPU; on a CPU pass --tiny")
    torch.set_grad_enabled(False)
    work = args.dir or tempfile.mkdtemp(prefix="lrq_ckpt_")
    path = os.path.join(work, f"{args.model}-w4a8.safetensors")

    t0 = time.perf_counter()
    model = build_model(args.model, device=device, dtype=torch.bfloat16, tiny=args.tiny)
    sync()
    build_s = time.perf_counter() - t0
    cfg = lrq.QuantConfig()
    t0 = time.perf_counter()
    lrq.quantize_model(model, cfg, progress=True, **dit_plan(cfg))
    sync()
    quant_s = time.perf_counter() - t0
    quant_gpu_peak = torch.cuda.max_memory_allocated() / GIB if device == "cuda" else None
    with torch.no_grad():
        want = model(**model_inputs(args.model, model, tiny=args.tiny, device=device))[0].cpu()
    t0 = time.perf_counter()
    lrq.save_quantized(model, path)
    save_s = time.perf_counter() - t0
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    file_gib = os.path.getsize(path) / GIB

    res_file = os.path.join(work, "child.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--child", path, res_file] + \
        (["--tiny"] if args.tiny else [])
    subprocess.run(cmd, check=True)
    with open(res_file) as f:
        child = json.load(f)
    got = torch.load(res_file + ".pt")
    row = {"model": args.model, "tiny": args.tiny, "build_s": build_s, "quant_s": quant_s,
           "quant_gpu_peak_gib": quant_gpu_peak, "save_s": save_s, "file_gib": file_gib, **child,
           "load_host_ratio": child["load_host_peak_gib"] / file_gib,
           "load_gpu_ratio": None if child["load_gpu_peak_gib"] is None else child["load_gpu_peak_gib"] / file_gib,
           "output_equal": bool(torch.equal(got, want)), **meta(args)}
    os.makedirs(args.out, exist_ok=True)
    jpath = os.path.join(args.out, "bench_checkpoint.json")
    rows = []
    if os.path.exists(jpath):
        with open(jpath) as f:
            rows = [r for r in json.load(f) if r["model"] != args.model]
    rows.append(row)
    with open(jpath, "w") as f:
        json.dump(rows, f, indent=1)
    lines = ["| model | quantize s | GPU peak while quantizing GiB | save s | file GiB | load s | load host peak "
             "GiB (× file) | load GPU peak GiB (× file) | output equal | GPU, date |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        gpu = "–" if r["load_gpu_peak_gib"] is None else f"{r['load_gpu_peak_gib']:.2f} ({r['load_gpu_ratio']:.2f}×)"
        qp = "–" if r["quant_gpu_peak_gib"] is None else f"{r['quant_gpu_peak_gib']:.1f}"
        lines.append(f"| {r['model']}{' (tiny)' if r['tiny'] else ''} | {r['quant_s']:.1f} | {qp} | "
                     f"{r['save_s']:.1f} | {r['file_gib']:.2f} | {r['load_s']:.1f} | {r['load_host_peak_gib']:.2f} "
                     f"({r['load_host_ratio']:.2f}×) | {gpu} | {r['output_equal']} | {r['gpu']}, {r['date']} |")
    with open(os.path.join(args.out, "bench_checkpoint.md"), "w") as f:
        f.write("# bench_checkpoint: quantize, save and load a real-config DiT (W4A8, uncalibrated)\n\n"
                "Commands, versions and dates per row in bench_checkpoint.json.\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return row


if __name__ == "__main__":
    main()
