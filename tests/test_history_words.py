"""Code, tests, tools and docs describe the product as it is: none of the words of WORDS, which tell the story
of the work (git's log keeps it); the result files under benchmarks/results included."""
import os
import re

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DIRS = ("lrq_kernels", "csrc", "tests", "tools", "docs", "benchmarks")
EXTS = (".py", ".cu", ".cuh", ".h", ".cpp", ".md", ".txt", ".sh", ".toml", ".json")
WORDS = re.compile(r"\bsessions? \d+|\bscratch\b|\breverted?\b|\bissue \d+|\bbuild of [0-9a-f]{7,40}\b|"
                   r"\b[0-9a-f]{7,40}'s\b", re.I)


def _files():
    yield os.path.join(ROOT, "README.md")
    for d in DIRS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, d)):
            dirnames[:] = [n for n in dirnames if n not in ("__pycache__", "assets")]
            for f in filenames:
                if f.endswith(EXTS):
                    yield os.path.join(dirpath, f)
    yield os.path.join(ROOT, "benchmarks", "assets", "digits_dit", "README.md")


def test_no_history_words():
    me = os.path.abspath(__file__)
    hits = []
    for path in _files():
        if os.path.abspath(path) == me:
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f, 1):
                if WORDS.search(line):
                    hits.append(f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()[:120]}")
    assert not hits, "history words:\n" + "\n".join(hits)
