"""Where the host's time goes in a quantized DiT's eager forward: cProfile of a few forwards on the GPU.

    python tools/profile_host.py --model pixart-sigma --mode w4a8 --out prof.txt

The GPU work is queued asynchronously, so a forward whose host time exceeds its GPU time is bound by Python: this
lists the functions that take it (tottime and cumtime over --iters forwards), with the forward's wall time.
"""
import argparse
import cProfile
import io
import os
import pstats
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import lrq_kernels as lrq  # noqa: E402
from lrq_kernels.benchmark import CONFIGS  # noqa: E402
from lrq_kernels.integrations.diffusers import build_model, dit_plan, model_inputs  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pixart-sigma")
    ap.add_argument("--mode", default="w4a8", choices=tuple(CONFIGS))
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", default="profile_host.txt")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = build_model(args.model, device="cuda")
    cfg = CONFIGS[args.mode]
    lrq.quantize_model(model, cfg, progress=False, **dit_plan(cfg))
    inputs = model_inputs(args.model, model, device="cuda")
    for _ in range(3):
        model(**inputs)
    torch.cuda.synchronize()
    # the forward's wall time with QuantLinear calling its ops' implementations directly (eager, no grad) and through
    # the dispatcher (docs/tuning.md: direct-eager-call), alternated, medians
    import statistics
    from lrq_kernels.nn import linear as nn_linear
    real = nn_linear._runs_eagerly
    walls = {"direct": [], "dispatcher": []}
    for _ in range(args.iters):
        for how in walls:
            nn_linear._runs_eagerly = real if how == "direct" else (lambda x: False)
            torch.cuda.synchronize()
            t = time.perf_counter()
            model(**inputs)
            torch.cuda.synchronize()
            walls[how].append((time.perf_counter() - t) * 1e3)
    nn_linear._runs_eagerly = real
    ab = {how: statistics.median(v) for how, v in walls.items()}
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(args.iters):
        model(**inputs)
    prof.disable()
    host = (time.perf_counter() - t0) / args.iters * 1e3
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / args.iters * 1e3
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    st.sort_stats("tottime").print_stats(25)
    st.sort_stats("cumulative").print_stats(25)
    n_q = sum(isinstance(m, lrq.QuantLinear) for m in model.modules())
    head = (f"{args.model} {args.mode}: {n_q} QuantLinears; GPU {torch.cuda.get_device_name()}, "
            f"torch {torch.__version__}, {time.strftime('%Y-%m-%d', time.gmtime())}\n"
            f"wall ms a forward (median of {args.iters}): ops called directly {ab['direct']:.1f}, through the "
            f"dispatcher {ab['dispatcher']:.1f}\n"
            f"under cProfile: host time a forward {host:.1f} ms, wall {wall:.1f} ms\n")
    with open(args.out, "w") as f:
        f.write(head + buf.getvalue())
    print(head + "\n".join(buf.getvalue().splitlines()[:45]))


if __name__ == "__main__":
    main()
