"""One memory model (:mod:`bernini.runtime.memory`): placement at load time, ``bernini estimate`` /
``--dry_run``, branch batching and the planner's batching all ask it, so they agree by construction.

The free device memory is mocked (``free_device_bytes``): there is no GPU here, and the batching rules only ask
on one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from bernini.planner.memory import planner_batch_bytes
from bernini.runtime import memory as memory_plan
from bernini.runtime.memory import (
    GIB,
    NOMINAL_REQUEST,
    Shapes,
    branch_batch_bytes,
    estimate_memory,
    model_sizes,
    runtime_decision,
)
from bernini.stages.denoise import batch_fits
from bernini.stages.planning import planner_batch_fits

EXPERT = SimpleNamespace(in_channels=16, patch_size=(1, 2, 2), ffn_dim=64, num_attention_heads=2, attention_head_dim=8)
QWEN = SimpleNamespace(text_config=SimpleNamespace(hidden_size=32, intermediate_size=48, num_attention_heads=4))


@pytest.fixture
def free(monkeypatch):
    """Set the device's free bytes the model sees (no GPU here)."""
    state = {"bytes": None}
    monkeypatch.setattr(memory_plan, "free_device_bytes", lambda device=None: state["bytes"])
    return state


def test_branch_batching_asks_the_model_on_a_device(free):
    components = SimpleNamespace(experts=[SimpleNamespace(config=EXPERT)])
    runtime = SimpleNamespace(dtype=torch.bfloat16, device=torch.device("cuda"))
    latent = 16 * 3 * 8 * 8  # 3 latent frames of 8x8: 48 tokens
    need = 2 * 48 * (2 * 64 + 4 * 2 * 8) * 2  # two branches, two FFN-wide and four attention-wide rows, bf16
    assert branch_batch_bytes(2, 48, EXPERT, torch.bfloat16) == need
    free["bytes"] = need
    assert not batch_fits(components, runtime, 2, latent)  # strictly less than the free memory
    free["bytes"] = need + 1
    assert batch_fits(components, runtime, 2, latent)
    free["bytes"] = None  # the CPU: no device limit
    assert batch_fits(components, runtime, 64, latent * 1000)


def test_planner_batching_asks_the_model_with_half_kept_spare(free):
    components = SimpleNamespace(planner=SimpleNamespace(qwen=SimpleNamespace(config=QWEN)))
    runtime = SimpleNamespace(dtype=torch.float32, device=torch.device("cuda"))
    need = 3 * (100 * (4 * 32 + 3 * 48) * 4 + (4 * 4 + 4) * 100 * 100)
    assert planner_batch_bytes(3, 100, QWEN, torch.float32) == need
    free["bytes"] = 2 * need
    assert planner_batch_fits(components, runtime, 3, 100)
    free["bytes"] = 2 * need - 1
    assert not planner_batch_fits(components, runtime, 3, 100)


def test_load_time_placement_and_the_plan_decide_alike(monkeypatch):
    """``runtime_decision`` (what ``from_pretrained`` places) and ``estimate_memory`` (what ``bernini estimate``
    prints) run through the same activation estimate and fit rule; at the published sizes they choose the same at
    every budget, and every mode comes up across the budgets."""
    calls = []
    real_fit = memory_plan.fit
    monkeypatch.setattr(memory_plan, "fit", lambda *a, **k: calls.append(a[2]) or real_fit(*a, **k))
    shapes = Shapes()
    sizes, _ = model_sizes(shapes, torch.bfloat16, "none")
    modes = set()
    for gib in (12, 24, 40, 48, 80, 141):
        planned = estimate_memory(NOMINAL_REQUEST, shapes=shapes, gpu_memory=gib * GIB).decision
        placed = runtime_decision(
            "auto", torch.device("cuda"), gib * GIB, sizes, shapes.transformer, shapes.vae, torch.bfloat16, False
        )
        assert placed == planned, gib
        assert calls[-1] == calls[-2]  # the same activations, from the same function
        modes.add(placed.mode)
    assert modes == {"none", "model", "blocks"}
    assert len(calls) == 12
