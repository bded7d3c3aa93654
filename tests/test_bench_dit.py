"""benchmarks/bench_dit.py's mechanics on the tiny configs (CPU): rows, keys, merging, the table."""
import json

import pytest
import torch

from lrq_kernels import benchmark as bench_dit

KEYS = {"model", "mode", "compile", "ms", "weight_gib", "peak_gib", "quant_s", "sqnr_db", "gpu", "torch", "date",
        "command"}


@pytest.mark.parametrize("model", ["flux.1-dev", "wan2.1-14b", "sd3.5-large", "pixart-sigma"])
def test_bench_dit_tiny_rows(model, tmp_path):
    with torch.no_grad():
        rows = bench_dit.main(["--tiny", "--models", model, "--modes", "bf16", "w4a8", "w4a16", "--compile",
                               "eager", "--iters", "1", "--out", str(tmp_path)])
    assert [r["mode"] for r in rows] == ["w4a8", "w4a16", "bf16"]
    saved = json.loads((tmp_path / "bench_dit.json").read_text())
    assert len(saved) == 3 and all(KEYS <= set(r) for r in saved)
    by = {r["mode"]: r for r in saved}
    assert by["bf16"]["sqnr_db"] == float("inf") and by["bf16"]["quant_s"] == 0
    # uncalibrated 4-bit weights on random N(0, 1/K) layers: each layer near 20 dB, the tiny model above 15
    assert by["w4a8"]["sqnr_db"] > 15 and by["w4a16"]["sqnr_db"] > 15
    assert by["w4a8"]["weight_gib"] < by["bf16"]["weight_gib"]
    table = (tmp_path / "bench_dit.md").read_text()
    assert f"| {model} (tiny) | w4a8 | eager |" in table
    # a second run of one mode replaces its row and keeps the others
    bench_dit.main(["--tiny", "--models", model, "--modes", "bf16", "--compile", "eager", "--iters", "1",
                    "--out", str(tmp_path)])
    assert len(json.loads((tmp_path / "bench_dit.json").read_text())) == 3
