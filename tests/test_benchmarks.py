"""The benchmark scripts run (on the CPU, for a step or two: a check of the scripts, not a
measurement; `make bench` / `make bench-gpu` measure)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_bench_script_runs_in_smoke_mode_on_the_cpu(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/bench_gpu.py", "--device", "cpu", "--smoke",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (tmp_path / "bench_gpu.md").read_text()
    assert "SMOKE RUN" in md and "published 32x32 baseline · fp32 · eager" in md


def test_gpu_bench_refuses_without_a_gpu(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    proc = subprocess.run([sys.executable, "benchmarks/bench_gpu.py", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no CUDA device" in proc.stdout
