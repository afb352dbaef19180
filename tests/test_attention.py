"""Attention kernels go through diffusers' dispatcher, and the recorded kernel is the one that ran."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bernini.models.attention as attention
from bernini.errors import BerniniError
from bernini.models.attention import AttentionBackend, select_backend


def test_sdpa_through_the_dispatcher_equals_torch_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 7, 3, 8, generator=g) for _ in range(3))  # [B, N, heads, D]
    expected = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    assert torch.equal(AttentionBackend()(q, k, v), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_always_runs_sdpa(dtype):
    assert select_backend("cpu", "auto", dtype).name == "sdpa"
    assert select_backend("cpu", "sdpa", dtype).dispatch_name == "native"


@pytest.mark.parametrize("kernel", ["fa3", "fa2", "sage"])
def test_forcing_a_fast_kernel_where_it_cannot_run_is_one_line(kernel):
    with pytest.raises(BerniniError, match="needs a CUDA device") as info:
        select_backend("cpu", kernel, torch.bfloat16)
    assert "\n" not in str(info.value)


def test_auto_never_names_a_kernel_that_fp32_cannot_use(monkeypatch):
    """An fp32 run on a GPU with flash installed runs SDPA, and says so (no CUDA needed to check the choice)."""
    monkeypatch.setattr(attention, "kernel_available", lambda name: True)
    monkeypatch.setattr(attention, "_is_hopper", lambda device: True)
    cuda = torch.device("cuda")
    assert select_backend(cuda, "auto", torch.float32).name == "sdpa"
    assert select_backend(cuda, "auto", torch.bfloat16).name == "fa3"
    monkeypatch.setattr(attention, "_is_hopper", lambda device: False)
    assert select_backend(cuda, "auto", torch.float16).name == "fa2"
    with pytest.raises(BerniniError, match="needs bf16 or fp16"):
        select_backend(cuda, "fa2", torch.float32)
    monkeypatch.setattr(attention, "kernel_available", lambda name: name == "sdpa")
    assert select_backend(cuda, "auto", torch.bfloat16).name == "sdpa"
    with pytest.raises(BerniniError, match="not installed"):
        select_backend(cuda, "sage", torch.bfloat16)


def test_every_attention_call_of_a_generation_goes_through_the_dispatcher(tiny_pipe, monkeypatch):
    calls = []
    dispatch = attention.dispatch_attention_fn

    def counting(*args, **kwargs):
        calls.append(kwargs.get("backend"))
        return dispatch(*args, **kwargs)

    monkeypatch.setattr(attention, "dispatch_attention_fn", counting)
    out = tiny_pipe("a cat", task_type="t2i", height=32, width=48, num_inference_steps=2, output_type="latent")
    layers = sum(len(expert.blocks) for expert in tiny_pipe.experts[:1])
    assert len(calls) >= 2 * 2 * layers * 2  # steps × branches × blocks × (self + cross)
    assert set(calls) == {"native"} and out.parameters["attention_backend"] == "sdpa"


@pytest.mark.parametrize("kernel", sorted(attention.KERNELS))
def test_each_kernel_matches_sdpa_where_it_runs(kernel):
    """Every kernel against PyTorch SDPA on the packed shapes (head dim 128, an odd token count), bf16 on CUDA.

    Runs whatever this machine has; the rest skip and say why (a CPU-only CI runs SDPA alone)."""
    if kernel != "sdpa":
        if not torch.cuda.is_available():
            pytest.skip(f"{kernel} needs a CUDA device; none here")
        if not attention.kernel_available(kernel):
            pytest.skip(f"{kernel}: its package is not installed here")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    backend = select_backend(device, kernel, dtype)
    assert backend.name == kernel
    g = torch.Generator(device).manual_seed(0)
    q, k, v = (torch.randn(1, 1029, 4, 128, generator=g, device=device, dtype=dtype) for _ in range(3))
    expected = F.scaled_dot_product_attention(
        q.transpose(1, 2).float(), k.transpose(1, 2).float(), v.transpose(1, 2).float()
    ).transpose(1, 2)
    got = backend(q, k, v).float()
    tolerance = 2e-2 if kernel == "sage" else 1e-2 if dtype == torch.bfloat16 else 1e-5
    assert (got - expected).abs().max() <= tolerance
