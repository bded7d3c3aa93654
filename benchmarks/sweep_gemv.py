"""SCRATCH (committed once, then reverted): gemv_a16's launch overridden by LRQ_GEMV_TUNE=per_sm:grid_mode:carveout:mt16
(CTAs an SM cap, 0 = occupancy; grid_mode 0 = persistent with equal tiles a CTA, 1 = min(tiles, resident CTAs),
2 = a CTA a tile; carveout = cudaFuncAttributePreferredSharedMemoryCarveout, -1 default; mt16 = 16-row weight tiles
a warp at M > 8, 0 = 2), read by csrc/gemv_a16.cu in this commit only. Each config timed cold once, its output
checked equal to the default's. python benchmarks/sweep_gemv.py"""
import json, os, sys, torch
sys.path.insert(0, "benchmarks")
from timing import cold_us, copy_gbps
from lrq_kernels import cuda as ck, ops
from lrq_kernels.formats.codebooks import TLQGrid, tlq_codebook
from lrq_kernels.formats.packing import pack_codes
from lrq_kernels.rotation.rotation import default_block
torch.manual_seed(0)
bw = copy_gbps()
print("copy GB/s", round(bw))
M1 = ["3:0:-1:0", "2:0:-1:0", "0:1:-1:0", "0:2:-1:0", "0:0:50:0", "0:0:100:0", "3:1:-1:0"]
M16 = ["1:0:-1:0", "2:0:-1:0", "3:0:-1:0", "0:1:-1:0", "0:2:-1:0", "0:0:-1:1", "0:0:-1:4", "2:0:-1:4", "1:0:-1:4",
       "0:0:50:0", "2:0:50:0", "0:2:-1:1"]
SHAPES = ((3072, 3072), (3072, 12288), (12288, 3072), (15360, 3072))
rows = []
for k, n in SHAPES:
    for bits in (4, 3):
        cb = tlq_codebook(bits, TLQGrid("geometric", 2 ** 0.5)).cuda()
        ws = [(pack_codes(torch.randint(0, 2 ** bits, (n, k), device="cuda", dtype=torch.uint8), bits),
               torch.rand(n, device="cuda") + 0.5) for _ in range(8)]
        wbytes = ws[0][0].numel() + 4 * n
        for m, cfgs, what in ((1, M1, "gemv"), (16, M16, "gemv"), (1, M1, "fwd")):
            if bits == 3 and what == "fwd":
                continue
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            block = default_block(k)
            if what == "gemv":
                call = lambda p: ck.gemv_a16_cuda(x, p[0], p[1], cb, bits, 0, None)
            else:
                call = lambda p: ops.quant_linear_a16(x, None, None, block, p[0], p[1], cb, bits, 0, None)
            def run(cfg):
                os.environ["LRQ_GEMV_TUNE"] = cfg
                y = call(ws[0])
                us = cold_us(lambda i: (lambda p=ws[i % 8]: call(p)), wbytes)
                return us, y
            base, ref = run("0:0:-1:0")
            line = {"k": k, "n": n, "m": m, "bits": bits, "what": what, "default_us": base, "cfgs": {}}
            print(f"{what} K={k} N={n} M={m} {bits}-bit: default {base:.2f} us ({wbytes / base / bw * 1e-3 * 100:.0f}% of copy)",
                  flush=True)
            for cfg in cfgs:
                try:
                    us, y = run(cfg)
                except Exception as e:
                    print("  ", cfg, "ERR", str(e)[:100]); continue
                ok = torch.equal(y, ref)
                line["cfgs"][cfg] = (us, ok)
                print(f"   {cfg:12s} {us:8.2f} us  {base / us:5.3f}x  {'ok' if ok else 'OUTPUT DIFFERS'}", flush=True)
            rows.append(line)
os.environ.pop("LRQ_GEMV_TUNE", None)
json.dump({"gpu": torch.cuda.get_device_name(), "copy_gbps": bw, "rows": rows},
          open(os.environ.get("OUT", ".") + "/sweep_gemv.json", "w"), indent=1)
