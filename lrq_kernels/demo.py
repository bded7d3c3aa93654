"""The main job, end to end: quantize a PixArt-style DiT and report memory, output error and (on a GPU) speed.

    python -m lrq_kernels.demo                 # CPU default: PixArt-Sigma width, 2 blocks, 32x32 latent
    python -m lrq_kernels.demo --full          # the real PixArt-Sigma 1024^2 config (28 blocks; meant for a GPU)

Weights are random (diffusers' initialisation): the demo shows the mechanics and the costs, not image quality.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from . import QuantConfig, calibrate, quantize_model, sqnr_db, weight_bytes
from ._threads import configure_cpu_threads
from .integrations.diffusers import DIT_SKIP, make_pixart, pixart_config, pixart_inputs
from .nn.linear import QuantLinear


def _time_forward(model, inputs, iters: int = 5) -> float:
    """Median ms of one forward on CUDA (events)."""
    times = []
    with torch.no_grad():
        for i in range(iters + 2):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(**inputs)
            end.record()
            torch.cuda.synchronize()
            if i >= 2:
                times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="PixArt-Sigma 1024^2 (28 blocks, 128x128 latent)")
    ap.add_argument("--layers", type=int, default=2, help="transformer blocks when not --full (default 2)")
    ap.add_argument("--w-bits", type=int, default=4, choices=(3, 4))
    ap.add_argument("--a-bits", type=int, default=8, choices=(4, 8, 16))
    ap.add_argument("--w-format", default="auto", choices=("auto", "tlq", "int", "nf", "learned"))
    ap.add_argument("--rotation", default="ars", choices=("ars", "hadamard", "none"))
    ap.add_argument("--rounding", default="gptq", choices=("gptq", "nearest"), help="weight rounding")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cpu":
        print(f"CPU threads: {configure_cpu_threads()} (the idle cores now; lrq_kernels/_threads.py says why)")
    cfg = pixart_config() if args.full else pixart_config(num_layers=args.layers, sample_size=32)
    text_tokens = 300 if args.full else 32
    qcfg = QuantConfig(w_bits=args.w_bits, a_bits=args.a_bits, w_format=args.w_format,
                       a_format="int" if args.a_bits == 4 else "fp8", rotation=args.rotation,
                       w_rounding=args.rounding)
    torch.set_grad_enabled(False)
    from diffusers.utils import logging as diffusers_logging
    diffusers_logging.set_verbosity_error()   # its advice on .to(dtype) is for from_pretrained models
    print(f"PixArt-style DiT: {cfg['num_layers']} blocks, width {cfg['num_attention_heads'] * cfg['attention_head_dim']}, "
          f"latent {cfg['sample_size']}x{cfg['sample_size']}, device {device}; config {qcfg}")

    model = make_pixart(cfg).to(device)
    inputs = pixart_inputs(cfg, text_tokens=text_tokens, device=device, dtype=torch.bfloat16)
    ref_model = copy.deepcopy(model).to(torch.bfloat16)
    ref = ref_model(**inputs)[0].float()
    fp32_out = model(**pixart_inputs(cfg, text_tokens=text_tokens, device=device))[0].float()

    t0 = time.time()
    calib_steps = (900.0, 500.0, 100.0)

    def run(m):
        for i, t in enumerate(calib_steps):
            m(**pixart_inputs(cfg, text_tokens=text_tokens, timestep=t, seed=100 + i, device=device))

    needs_calib = args.rotation == "ars" or args.rounding == "gptq"
    stats = calibrate(model, run, skip=DIT_SKIP) if needs_calib else None
    t_cal = time.time() - t0
    quantize_model(model, qcfg, calib=stats, skip=DIT_SKIP)
    t_quant = time.time() - t0 - t_cal
    model = model.to(torch.bfloat16)
    out = model(**inputs)[0].float()

    qlayers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    q_bytes = sum(weight_bytes(m) for m in qlayers)
    q_bf16 = sum(2 * (m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)) for m in qlayers)
    total_before, total_after = weight_bytes(ref_model), weight_bytes(model)
    formats, rotations = {}, {}
    for m in qlayers:
        formats[m.w_format] = formats.get(m.w_format, 0) + 1
        rotations[m.rotation_kind] = rotations.get(m.rotation_kind, 0) + 1
    res = {
        "quantized_layers": len(qlayers), "formats": formats, "rotations": rotations,
        "linear_MiB_bf16": q_bf16 / 2 ** 20, "linear_MiB_quant": q_bytes / 2 ** 20,
        "model_MiB_bf16": total_before / 2 ** 20, "model_MiB_quant": total_after / 2 ** 20,
        "sqnr_db_vs_bf16": sqnr_db(ref, out), "sqnr_db_bf16_vs_fp32": sqnr_db(fp32_out, ref),
        "calibrate_s": t_cal, "quantize_s": t_quant,
    }
    print(f"quantized {len(qlayers)} linear layers in {t_quant:.1f} s (calibration {t_cal:.1f} s); "
          f"formats {formats}; rotations {rotations}")
    print(f"weight memory, quantized linears: {res['linear_MiB_bf16']:.1f} MiB bf16 -> {res['linear_MiB_quant']:.1f} MiB "
          f"({res['linear_MiB_bf16'] / res['linear_MiB_quant']:.2f}x smaller)")
    print(f"weight memory, whole model:       {res['model_MiB_bf16']:.1f} MiB bf16 -> {res['model_MiB_quant']:.1f} MiB")
    print(f"output SQNR against bf16: {res['sqnr_db_vs_bf16']:.2f} dB  "
          f"(bf16 against fp32, for scale: {res['sqnr_db_bf16_vs_fp32']:.2f} dB)")
    if device.type == "cuda":
        res["ms_bf16"] = _time_forward(ref_model, inputs)
        res["ms_quant"] = _time_forward(model, inputs)
        print(f"time per forward: bf16 {res['ms_bf16']:.2f} ms, {qcfg.name} {res['ms_quant']:.2f} ms")
    else:
        print("time per forward: not measured (no GPU; the CPU path runs the PyTorch reference)")
    return res


if __name__ == "__main__":
    main()
