"""The command line: python -m lrq_kernels {quantize, run, info, bench} (each with --help).

    python -m lrq_kernels quantize --model flux.1-dev --out flux-w4a8.safetensors          # real config, random weights
    python -m lrq_kernels quantize --pretrained ./FLUX.1-dev/transformer --out flux-w4a8.safetensors
    python -m lrq_kernels quantize --pipeline ./pixart-sigma --prompt "a cat" --calibrate 3 --out pixart.safetensors
    python -m lrq_kernels run flux-w4a8.safetensors                                         # one transformer forward
    python -m lrq_kernels run pixart.safetensors --pipeline ./pixart-sigma --prompt "a cat" --output cat.png
    python -m lrq_kernels info flux-w4a8.safetensors
    python -m lrq_kernels bench --model flux.1-dev --modes bf16 w4a8 --compile eager

Quantization follows dit_plan (integrations/diffusers.py): embeddings and the final projection stay in float,
the adaLN modulation linears are quantized weight-only, every other linear under the config given. With
--calibrate N, ARS chooses each layer's rotation and GPTQ rounds its codes from N timesteps: through the pipeline
(--pipeline with --prompt) or on random inputs of the model's shapes (--model, --pretrained).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from . import QuantConfig, calibrate, load_quantized_model, quantize_model, save_quantized, weight_bytes
from ._threads import configure_cpu_threads
from .integrations.diffusers import MODELS, build_model, dit_plan, is_tiny, model_inputs
from .nn.linear import QuantLinear

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _device(name: str | None) -> torch.device:
    dev = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: no CUDA GPU is available here")
    if dev.type == "cpu":
        configure_cpu_threads()
    return dev


def _size(nbytes: float) -> str:
    return f"{nbytes / 2 ** 30:.2f} GiB" if nbytes >= 2 ** 30 else f"{nbytes / 2 ** 20:.2f} MiB"


def _model_name_of(model) -> str | None:
    """The MODELS name whose class this model is (for its input shapes), or None."""
    cls = type(model).__name__
    return next((name for name, spec in MODELS.items() if spec[0] == cls), None)


def _quant_config(args) -> QuantConfig:
    return QuantConfig(w_bits=args.w_bits, a_bits=args.a_bits, w_format=args.w_format,
                       a_format="int" if args.a_bits == 4 else "fp8", rotation=args.rotation,
                       w_rounding=args.rounding)


def _load_pipeline(path: str, device, dtype, transformer=None):
    from diffusers import DiffusionPipeline
    kwargs = {"transformer": transformer} if transformer is not None else {}
    try:
        pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=dtype, **kwargs)
    except Exception as e:
        raise SystemExit(f"--pipeline {path}: cannot load a diffusers pipeline from it: {e}")
    return pipe.to(device)


def _pipeline_call(pipe, args, generator, steps: int | None = None):
    kwargs = dict(prompt=args.prompt, num_inference_steps=steps or args.steps, generator=generator)
    if args.height:
        kwargs.update(height=args.height, width=args.width or args.height)
    if args.guidance is not None:
        kwargs["guidance_scale"] = args.guidance
    import inspect
    if "use_resolution_binning" in inspect.signature(pipe.__call__).parameters:
        kwargs["use_resolution_binning"] = False   # keep the size asked for
    return pipe(**kwargs)


def cmd_quantize(args) -> int:
    device = _device(args.device)
    dtype = DTYPES[args.dtype]
    sources = [s for s in (args.model, args.pretrained, args.pipeline) if s]
    if len(sources) != 1:
        raise SystemExit("quantize: give exactly one of --model NAME, --pretrained DIR, --pipeline DIR")
    pipe = None
    t0 = time.perf_counter()
    if args.model:
        model = build_model(args.model, device=device, dtype=dtype, tiny=args.tiny, seed=args.seed)
        name = args.model
    elif args.pretrained:
        import diffusers
        cfg_name = _class_in_folder(args.pretrained)
        cls = getattr(diffusers, cfg_name, None)
        if cls is None:
            raise SystemExit(f"--pretrained {args.pretrained}: config.json names {cfg_name!r}, not a diffusers model")
        model = cls.from_pretrained(args.pretrained, torch_dtype=dtype).to(device).eval()
        name = _model_name_of(model)
    else:
        pipe = _load_pipeline(args.pipeline, device, dtype)
        model = getattr(pipe, "transformer", None)
        if model is None:
            raise SystemExit(f"--pipeline {args.pipeline}: the pipeline has no transformer")
        name = _model_name_of(model)
    model.requires_grad_(False)
    print(f"{type(model).__name__}: {_size(weight_bytes(model))} in {args.dtype} on {device}, "
          f"made in {time.perf_counter() - t0:.1f} s", flush=True)
    cfg = _quant_config(args)
    plan = dit_plan(cfg, args.adaln)
    stats = None
    if args.calibrate:
        stats = _calibrate(model, pipe, name, args, plan, device, dtype)
    t0 = time.perf_counter()
    quantize_model(model, cfg, calib=stats, progress=True, **plan)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"quantized {sum(isinstance(m, QuantLinear) for m in model.modules())} linears to {cfg.name} in "
          f"{time.perf_counter() - t0:.1f} s: {_size(weight_bytes(model))}", flush=True)
    save_quantized(model, args.out)
    print(f"saved {args.out} ({_size(os.path.getsize(args.out))})")
    return 0


def _class_in_folder(path: str) -> str:
    import json
    try:
        with open(os.path.join(path, "config.json")) as f:
            return json.load(f)["_class_name"]
    except (OSError, KeyError, ValueError) as e:
        raise SystemExit(f"--pretrained {path}: not a diffusers model folder (config.json with _class_name): {e}")


def _calibrate(model, pipe, name, args, plan, device, dtype):
    from tqdm.auto import tqdm
    steps = args.calibrate
    if pipe is not None:
        if not args.prompt:
            raise SystemExit("quantize --pipeline --calibrate: give --prompt (the calibration prompts)")
        def run(m):
            _pipeline_call(pipe, args, torch.Generator(device="cpu").manual_seed(args.seed), steps=steps)
        print(f"calibrating through the pipeline: {steps} steps of {args.prompt!r}", flush=True)
        return calibrate(model, run, skip=plan["skip"])
    if name is None:
        raise SystemExit(f"quantize --calibrate: no input shapes known for {type(model).__name__}; calibrate "
                         f"through its pipeline (--pipeline DIR --prompt ...)")
    tiny = is_tiny(name, model)
    times = [1.0 - (i + 0.5) / steps for i in range(steps)]

    def run(m):
        for i, t in enumerate(tqdm(times, desc="calibrating", unit="timestep")):
            m(**model_inputs(name, m, tiny=tiny, seed=1000 + i, timestep=t, device=device, dtype=dtype))
    return calibrate(model, run, skip=plan["skip"])


def cmd_run(args) -> int:
    device = _device(args.device)
    dtype = DTYPES[args.dtype]
    t0 = time.perf_counter()
    model = load_quantized_model(args.checkpoint, device=device, dtype=dtype, progress=True)
    print(f"loaded {args.checkpoint}: {type(model).__name__}, {_size(weight_bytes(model))}, in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    if args.pipeline:
        if not args.prompt:
            raise SystemExit("run --pipeline: give --prompt")
        pipe = _load_pipeline(args.pipeline, device, dtype, transformer=model)
        pipe.set_progress_bar_config(disable=False)
        t0 = time.perf_counter()
        image = _pipeline_call(pipe, args, torch.Generator(device="cpu").manual_seed(args.seed)).images[0]
        out = args.output or "lrq_output.png"
        image.save(out)
        print(f"{args.steps} steps in {time.perf_counter() - t0:.1f} s; image saved to {out}")
        return 0
    name = _model_name_of(model)
    if name is None:
        raise SystemExit(f"run: no input shapes known for {type(model).__name__}; run it through its pipeline "
                         f"(--pipeline DIR --prompt ...)")
    inputs = model_inputs(name, model, tiny=is_tiny(name, model), seed=args.seed, device=device, dtype=dtype)
    with torch.no_grad():
        out = model(**inputs)[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            model(**inputs)
            b.record()
            torch.cuda.synchronize()
            print(f"one forward: {a.elapsed_time(b):.1f} ms; ", end="")
    print(f"output {tuple(out.shape)} {str(out.dtype).replace('torch.', '')}, mean {out.float().mean():.4f}, "
          f"std {out.float().std():.4f}, finite {bool(torch.isfinite(out).all())}")
    return 0


def cmd_info(args) -> int:
    from .nn.checkpoint import read_checkpoint
    try:
        ck = read_checkpoint(args.checkpoint)
    except ValueError as e:
        raise SystemExit(str(e))
    formats = {}
    for layout in ck.layouts.values():
        key = f"W{layout['config']['w_bits']}A{layout['config']['a_bits']} {layout['w_format']}"
        formats[key] = formats.get(key, 0) + 1
    size = sum(os.path.getsize(f) for f in set(ck.files.values()))
    print(f"{args.checkpoint}: {ck.model_class}, {len(ck.layouts)} quantized linears {formats}, "
          f"{len(ck.specs)} tensors, {_size(size)}, checksums "
          f"{'recorded' if ck.checksums is not None else 'absent (a save_pretrained folder)'}")
    return 0


def cmd_bench(args, rest) -> int:
    from .benchmark import main as bench_main
    bench_main(["--models", args.model] + rest, command="python -m lrq_kernels bench")
    return 0


def _add_quant_options(p):
    p.add_argument("--w-bits", type=int, default=4, choices=(3, 4))
    p.add_argument("--a-bits", type=int, default=8, choices=(4, 8, 16), help="16: weight-only")
    p.add_argument("--w-format", default="auto", choices=("auto", "tlq", "int", "nf", "learned"))
    p.add_argument("--rotation", default="ars", choices=("ars", "hadamard", "none"),
                   help="ars needs --calibrate; without it every layer takes the block Hadamard")
    p.add_argument("--rounding", default="gptq", choices=("gptq", "nearest"),
                   help="gptq needs --calibrate; without it weights round to nearest")
    p.add_argument("--adaln", default="weight-only", choices=("weight-only", "float"),
                   help="the adaLN modulation linears: quantized weight-only, or kept in float")


def _add_pipeline_options(p):
    p.add_argument("--prompt", default=None)
    p.add_argument("--steps", type=int, default=20, help="inference steps (run --pipeline)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m lrq_kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    common.add_argument("--dtype", default="bf16", choices=tuple(DTYPES), help="float tensors' dtype")
    common.add_argument("--seed", type=int, default=0)

    q = sub.add_parser("quantize", parents=[common], help="quantize a diffusers DiT transformer into a checkpoint")
    q.add_argument("--model", choices=tuple(MODELS), help="a named real config with random weights")
    q.add_argument("--tiny", action="store_true", help="with --model: its tiny variant (CPU demos)")
    q.add_argument("--pretrained", help="a local diffusers transformer folder (config.json + safetensors)")
    q.add_argument("--pipeline", help="a local diffusers pipeline folder; its transformer is quantized")
    q.add_argument("--calibrate", type=int, default=0, metavar="N",
                   help="calibrate ARS and GPTQ from N timesteps (0: uncalibrated)")
    q.add_argument("--out", required=True, help="the checkpoint file to write (.safetensors)")
    _add_quant_options(q)
    _add_pipeline_options(q)

    r = sub.add_parser("run", parents=[common], help="run a checkpoint: one transformer forward, or a pipeline")
    r.add_argument("checkpoint")
    r.add_argument("--pipeline", help="a local diffusers pipeline folder to run with the quantized transformer")
    r.add_argument("--output", help="the image file (run --pipeline; default lrq_output.png)")
    _add_pipeline_options(r)

    i = sub.add_parser("info", help="what a checkpoint holds")
    i.add_argument("checkpoint")

    b = sub.add_parser("bench", help="bench_dit on one model (other options pass through: see --help-bench)",
                       add_help=True)
    b.add_argument("--model", required=True, choices=tuple(MODELS))
    return ap


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser()
    if argv[:1] == ["bench"] and "--help-bench" in argv:
        from .benchmark import main as bench_main
        return bench_main(["--help"]) or 0
    args, rest = ap.parse_known_args(argv)
    if args.command == "bench":
        return cmd_bench(args, rest)
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    with torch.no_grad():
        return {"quantize": cmd_quantize, "run": cmd_run, "info": cmd_info}[args.command](args)
