"""``bench/gpu_suite.py`` at reduced shapes on the CPU (as CI runs it), and its FLOP count against the spec."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "bench" / "gpu_suite.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_flop_count_is_the_specs_480p_t2v(suite):
    """performance.md: one A14B forward at 32,760 tokens ≈ 1,678 TFLOP, 53 % of it attention."""
    shape = suite.SHAPES["a14b"]
    dim = shape["heads"] * shape["head_dim"]
    tokens = 21 * 60 * 104 // 4
    assert tokens == 32760
    total = suite.forward_flops(tokens, 512, dim, shape["ffn"], shape["layers"])
    attention = shape["layers"] * (4 * tokens * tokens * dim + 4 * tokens * 512 * dim)
    assert abs(total / 1e12 - 1678) < 5
    assert 0.52 < attention / total < 0.54


def test_reduced_suite_runs_on_the_cpu(suite, tmp_path, capsys):
    out = tmp_path / "rows.json"
    rows = suite.main(["--tiny", "--device", "cpu", "--repeats", "1", "--json", str(out)])
    by_name = {r.name: r for r in rows}
    measured = [by_name[f"{p}, sdpa"] for p in suite.PACKINGS]
    assert all(r.seconds > 0 and r.tflops > 0 and r.floor_share == r.tflops / 790 for r in measured)
    assert measured[0].tokens < measured[1].tokens < measured[2].tokens  # v2v and rv2v pack more
    assert by_name["t2v, 2 branches batched"].seconds > 0
    for kernel in ("fa3", "fa2", "sage"):
        assert "CUDA" in by_name[f"t2v, {kernel}"].note  # listed with its reason, not silently dropped
    assert "fp8" in by_name["t2v, fp8 linears"].note
    assert json.loads(out.read_text())["rows"][0]["name"] == "t2v, sdpa"
    assert "share of 790" in capsys.readouterr().out
