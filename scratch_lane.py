import os, sys, torch
sys.path.insert(0, "benchmarks")
from timing import cold_us, copy_gbps
import lrq_kernels.cuda as ck
from bench_cuda import pool_of
bw = copy_gbps()
print("copy GB/s", round(bw))
for m, k in ((8192, 1152), (8858, 2432)):
    x_ = pool_of(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
    nbytes = m * k * 3 + 4 * m
    ref = None
    cfgs = ["4,4", "8,2", "8,3", "7,2", "7,3", "6,3", "4,5", "5,4", "3,5"] if k == 1152 else ["2,4", "4,2", "4,3", "2,6", "3,3"]
    res = {c: [] for c in cfgs}
    for rep in range(2):
        for c in cfgs:
            os.environ["LRQ_SCRATCH_LANE"] = c
            out = ck.rotate_quant_cuda(x_(0), None, None, 128, "fp8", 8)
            if ref is None: ref = out
            assert torch.equal(out[0].view(torch.uint8), ref[0].view(torch.uint8)) and torch.equal(out[1], ref[1]), c
            res[c].append(cold_us(lambda i: (lambda x=x_(i): ck.rotate_quant_cuda(x, None, None, 128, "fp8", 8)), nbytes))
    for c in cfgs:
        t = min(res[c])
        print(m, k, c, round(t, 2), "us", round(100 * nbytes / t / 1e3 / bw, 1), "% copy", [round(v, 2) for v in res[c]])
