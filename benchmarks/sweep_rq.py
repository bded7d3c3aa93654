"""SCRATCH (committed once, then reverted): rotate_quant's plan overridden by LRQ_RQ_TUNE=rows:stages:persm:contiguous
(tokens a CTA, ring stages, CTAs an SM; 0 keeps the default; contiguous: even token ranges a CTA), read by csrc/rotate_quant.cu in this commit only; each
config timed cold once, codes checked equal to the default's, plus x.to(float8_e4m3fn) as a kernel that moves the
same bytes. python benchmarks/sweep_rq.py --set tiling|transpose"""
import json, os, sys, torch
sys.path.insert(0, "benchmarks")
from timing import cold_us, copy_gbps
from lrq_kernels import cuda as ck
torch.manual_seed(0)
bw = copy_gbps()
print("copy GB/s", round(bw))
# --set tiling (first sweep, 07:10 UTC, session 19: its block-1024 rows ran before the transposed path existed);
# --set transpose (second, 07:31 UTC, on the transposed path).
SETS = {
 # session 21: rows:stages:persm:contiguous (contiguous 1: each CTA a contiguous, even share of the tokens)
 "grid": {  # rows:stages:persm:contiguous:grid (grid -1: the resident CTAs cut to even rounds)
  (8192, 1152, 128): ["4:0:4:0:0", "4:0:0:0:528", "4:0:0:0:600", "4:0:0:0:683", "4:0:0:0:720", "4:0:0:0:-1",
                      "3:0:0:0:683", "3:0:0:0:911", "3:0:0:0:-1", "5:0:0:0:547", "5:0:0:0:410", "5:0:0:0:-1",
                      "7:0:0:0:293", "7:0:0:0:-1", "6:0:0:0:456", "6:0:0:0:-1", "4:0:0:0:410", "4:3:0:0:528"],
  (8858, 2432, 128): ["2:0:0:0:0", "2:0:0:0:554", "2:0:0:0:633", "2:0:0:0:739", "2:0:0:0:-1", "2:0:4:0:0",
                      "3:0:0:0:493", "3:0:0:0:-1", "2:3:0:0:-1"],
  (512, 1152, 128): ["0:0:0:0:-1", "2:0:0:0:0", "2:0:0:0:-1"],
  (4608, 3072, 1024): ["0:0:0:0:1152", "0:0:0:0:1536", "0:0:0:0:2304", "0:0:0:0:1056", "0:0:0:0:-1", "0:3:0:0:1152"],
  (8192, 4608, 512): ["0:0:0:0:373", "0:0:0:0:342", "0:0:0:0:-1", "0:3:0:0:-1"],
  (4608, 12288, 1024): ["0:0:0:0:-1"],
  (4608, 15360, 1024): ["0:0:0:0:-1"],
  (32760, 5120, 1024): ["0:0:0:0:-1"],
  (32760, 13824, 512): ["0:0:0:0:-1"],
 },
 "bal2": {
  (8858, 2432, 128): ["2:0:0:0", "2:0:0:1", "2:3:0:0", "2:3:0:1", "2:4:0:1", "1:0:0:0", "1:0:0:1", "3:0:0:0",
                      "2:0:4:1", "2:0:5:1", "4:0:0:0"],
  (8192, 1152, 128): ["2:0:0:0", "2:0:0:1", "1:0:0:0", "2:3:0:0", "3:3:0:0", "4:3:0:0", "4:4:0:0", "4:0:5:0",
                      "4:0:4:0", "4:0:0:0", "3:0:0:0"],
  (4608, 3072, 1024): ["1:3:0:0", "1:4:0:0", "3:0:0:0", "1:0:8:0", "1:0:12:0", "1:0:16:0"],
  (8192, 4608, 512): ["1:0:0:0", "2:3:0:0", "2:0:2:0", "4:0:0:0"],
 },
 "bal": {
  (8192, 1152, 128): ["0:0:0:1", "7:0:3:0", "7:0:3:1", "7:3:0:0", "7:3:0:1", "3:0:0:0", "3:0:0:1", "4:0:0:0",
                      "4:0:0:1", "5:0:0:0", "5:0:0:1", "6:0:0:1", "8:0:0:1", "14:0:0:0", "14:0:0:1", "3:3:0:1",
                      "4:3:0:1", "7:0:2:1"],
  (512, 1152, 128): ["0:0:0:1", "1:0:0:0", "2:0:0:0", "2:0:0:1"],
  (8858, 2432, 128): ["0:0:0:1", "2:0:0:1", "3:0:0:1", "4:0:0:1", "5:3:0:1"],
  (8192, 4608, 512): ["0:0:0:1", "2:0:2:1", "1:0:0:1", "2:3:0:1"],
  (4608, 3072, 1024): ["0:0:0:1", "2:0:0:1", "1:0:8:1", "1:0:6:1"],
  (4608, 12288, 1024): ["0:0:0:1"],
  (4608, 15360, 1024): ["0:0:0:1"],
  (32760, 5120, 1024): ["0:0:0:1"],
  (32760, 13824, 512): ["0:0:0:1"],
 },
}
cfgs = SETS[sys.argv[sys.argv.index("--set") + 1] if "--set" in sys.argv else "bal"]
shapes = list(cfgs)
rows = []
for m, k, block in shapes:
    nbytes = m * k * 2 + m * k + 4 * m
    xs = {}
    def x_(i):
        if i not in xs:
            xs[i] = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        return xs[i]
    os.environ.pop("LRQ_RQ_TUNE", None)
    ref = ck.rotate_quant_cuda(x_(0), None, None, block, "fp8", 8)
    def run(cfg):
        if cfg:
            os.environ["LRQ_RQ_TUNE"] = cfg
        else:
            os.environ.pop("LRQ_RQ_TUNE", None)
        out = ck.rotate_quant_cuda(x_(0), None, None, block, "fp8", 8)
        ok = torch.equal(out[0].view(torch.uint8), ref[0].view(torch.uint8)) and torch.equal(out[1], ref[1])
        us = cold_us(lambda i: (lambda x=x_(i): ck.rotate_quant_cuda(x, None, None, block, "fp8", 8)), nbytes)
        return us, ok
    base, _ = run("")
    cast = cold_us(lambda i: (lambda x=x_(i): x.to(torch.float8_e4m3fn)), nbytes)
    line = {"m": m, "k": k, "block": block, "default_us": base, "default_pct": nbytes / base / bw * 1e-3 * 100,
            "cast_us": cast, "cast_pct": nbytes / cast / bw * 1e-3 * 100, "cfgs": {}}
    print(f"{m}x{k} b{block}: default {base:.2f} us ({line['default_pct']:.0f}%), fp8 cast {cast:.2f} us ({line['cast_pct']:.0f}%)", flush=True)
    for cfg in cfgs[(m, k, block)]:
        try:
            us, ok = run(cfg)
        except Exception as e:
            print("  ", cfg, "ERR", str(e)[:100]); continue
        line["cfgs"][cfg] = (us, ok)
        print(f"   {cfg:12s} {us:8.2f} us  {base / us:5.3f}x  ({nbytes / us / bw * 1e-3 * 100:.0f}%) {'ok' if ok else 'CODES DIFFER'}", flush=True)
    os.environ.pop("LRQ_RQ_TUNE", None)
    rows.append(line)
    xs.clear(); torch.cuda.empty_cache()
json.dump({"gpu": torch.cuda.get_device_name(), "copy_gbps": bw, "rows": rows}, open(os.environ.get("OUT", ".") + "/sweep_rq.json", "w"), indent=1)
