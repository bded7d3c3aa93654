"""The README's usage block runs as written (on the CPU, in a temporary folder)."""
import os
import re

import torch


def test_readme_usage_runs_as_written(tmp_path, monkeypatch):
    text = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    usage = text[text.index("## Usage"):]
    code = re.search(r"```python\n(.*?)```", usage, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope = {}
    with torch.no_grad():
        exec(compile(code, "README.md usage", "exec"), scope)
    assert (tmp_path / "flux-w4a8.safetensors").exists()
    assert scope["codes"].dtype == torch.float8_e4m3fn and scope["scales"].shape == (8,)
    assert torch.isfinite(scope["out"]).all()
    assert sum(isinstance(m, scope["lrq"].QuantLinear) for m in scope["model"].modules()) > 0
