"""Loading the published full-Bernini layout (spec §1) from the tiny full bundle the project writes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bernini.errors import WeightsError
from bernini.loaders.bundle import BundleSpec
from bernini.loaders.full_config import (
    OLD_CONNECTOR_KEYS,
    RELEASED_KEYS,
    UNRELEASED_KEYS,
    planner_widths,
    renderer_config_from,
)
from bernini.planner.loading import FullBundle, load_planner, load_renderer_parts, qwen_key
from bernini.sampling.full_presets import detect_version


@pytest.fixture(scope="session")
def written(full_bundle):
    """Every tensor of the ``bernini/`` shards, read with safetensors (independently of the loader)."""
    tensors = {}
    for shard in sorted((full_bundle / "bernini").glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    return tensors


def test_layout_is_the_published_one(full_bundle, written):
    assert BundleSpec.read(full_bundle).is_full and not BundleSpec.read(full_bundle / "vae").is_full
    for name in ("config.json", "transformer_config.json", "transformer_2_config.json"):
        assert (full_bundle / name).is_file()
    for name in ("bernini", "mllm", "t5_text_encoder", "t5_tokenizer", "vae", "scheduler"):
        assert (full_bundle / name).is_dir()
    prefixes = {key.split(".")[0] for key in written}
    expected = {"diff_dec", "diff_dec_low", "mllm", "t5_text_encoder", "connector", "vit_decoder", "mask_tokens"}
    assert prefixes == expected
    assert json.loads((full_bundle / "config.json").read_text())["model_type"] == "bernini"
    assert "depth" not in json.loads((full_bundle / "config.json").read_text())["clip_diff_cfg"]


def test_planner_loads_the_written_tensors_and_stops_at_the_layer_read(full_bundle, written):
    planner = load_planner(FullBundle.open(full_bundle), torch.float32)
    state = planner.qwen.state_dict()
    loaded = 0
    for key, value in written.items():
        if not key.startswith("mllm."):
            continue
        name = qwen_key(key)
        if name.startswith(("language_model.layers.2.", "language_model.norm.", "lm_head")):
            assert name not in state, name
            continue
        assert torch.equal(state[name], value), name
        loaded += 1
    assert loaded == len(state) and len(planner.qwen.language_model.layers) == 2
    for prefix, module in (("connector.", planner.connector), ("vit_decoder.", planner.vit_decoder)):
        for name, value in module.state_dict().items():
            assert torch.equal(value, written[prefix + name]), prefix + name
    assert len(planner.vit_decoder.net.res_blocks) == 2  # depth read from the checkpoint, not config.json
    assert torch.equal(planner.mask_token, written["mask_tokens"][0, 0])
    assert planner.tokenizer.convert_tokens_to_ids("<|vision_start|>") == 151652


def test_truncated_planner_reads_what_the_full_model_gives_as_hidden_states_minus_two(full_bundle, written):
    """Independent reference: stock Qwen2.5-VL with all three layers, loaded strictly from the same tensors."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    config = AutoConfig.from_pretrained(full_bundle / "mllm")
    reference = Qwen2_5_VLForConditionalGeneration(config).eval()
    state = {}
    for key, value in written.items():
        if key.startswith("mllm."):
            name = qwen_key(key)
            state[name if name == "lm_head.weight" else "model." + name] = value
    reference.load_state_dict(state, strict=True)
    planner = load_planner(FullBundle.open(full_bundle), torch.float32)
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, 11, 64, generator=g)
    positions = torch.arange(11).view(1, 1, -1).expand(3, 1, -1)
    with torch.no_grad():
        full = reference.model(inputs_embeds=embeds, position_ids=positions, output_hidden_states=True)
        ours = planner.qwen(inputs_embeds=embeds, position_ids=positions)
    assert len(full.hidden_states) == 4
    assert torch.allclose(ours.last_hidden_state, full.hidden_states[-2], atol=1e-6)
    assert not torch.allclose(full.hidden_states[-1], full.hidden_states[-2], atol=1e-3)


def test_renderer_parts_come_from_the_checkpoint_over_the_t5_folder(full_bundle, written):
    parts = load_renderer_parts(FullBundle.open(full_bundle), torch.float32)
    for name, prefix in (("transformer", "diff_dec.transformer."), ("transformer_2", "diff_dec_low.transformer_2.")):
        for key, value in parts[name].state_dict().items():
            assert torch.equal(value, written[prefix + key]), key
    encoder = parts["text_encoder"].state_dict()
    assert torch.equal(encoder["shared.weight"], written["t5_text_encoder.shared.weight"])
    folder = load_file(str(next((full_bundle / "t5_text_encoder").glob("*.safetensors"))))
    assert not torch.equal(encoder["shared.weight"], folder["shared.weight"])  # bernini/ wins, as upstream
    assert parts["transformer"].config.text_dim == encoder["shared.weight"].shape[1] == 40


def _dotted(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in data.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _dotted(value, f"{prefix}{key}.")
    return keys


def test_the_tiny_bundle_writes_the_released_keys_with_out_vit_not_the_qwen_width(full_bundle, written):
    config = json.loads((full_bundle / "config.json").read_text())
    qwen = json.loads((full_bundle / "mllm" / "config.json").read_text())
    hidden = qwen.get("hidden_size") or qwen["text_config"]["hidden_size"]
    widths = config["connector_cfg"]
    gen, vit = widths["out_dim_for_gen"], widths["out_dim_for_vit"]
    assert "out_gen" not in widths and "out_vit" not in widths
    assert len({hidden, gen, vit}) == 3  # every mix-up of the three widths shows as a shape error
    assert _dotted(config) <= RELEASED_KEYS, _dotted(config) - RELEASED_KEYS
    shapes = {k[len("connector.") :]: tuple(v.shape) for k, v in written.items() if k.startswith("connector.")}
    assert shapes["pred_vit.0.weight"] == (vit, hidden) and shapes["pred_vit.2.weight"] == (vit, vit)
    assert shapes["pred_vit.3.weight"] == (vit,) and shapes["pred_vit.4.weight"] == (vit, vit)
    assert shapes["proj_gen.0.weight"] == (gen, hidden) and shapes["proj_gen.3.weight"] == (gen, gen)
    planner = load_planner(FullBundle.open(full_bundle), torch.float32)
    assert planner.connector.vit_condition(torch.zeros(1, 3, hidden)).shape == (1, 3, vit)
    assert planner.connector.generation_context(torch.zeros(1, 3, hidden)).shape == (1, 3, gen)


class _Recording(dict):
    """A config that records every key read from it (``get``, ``[]``, ``in``), nested sections dotted."""

    def __init__(self, data: dict, seen: set[str], prefix: str = "") -> None:
        wrapped = {k: _Recording(v, seen, f"{prefix}{k}.") if isinstance(v, dict) else v for k, v in data.items()}
        super().__init__(wrapped)
        self.seen, self.prefix = seen, prefix

    def get(self, key, default=None):
        self.seen.add(self.prefix + key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.seen.add(self.prefix + key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.seen.add(self.prefix + key)
        return super().__contains__(key)


def test_every_full_config_key_read_is_a_released_one_or_listed_as_not_released(full_bundle):
    seen: set[str] = set()
    config = _Recording(json.loads((full_bundle / "config.json").read_text()), seen)
    path = full_bundle / "config.json"
    renderer_config_from(config, path, full_bundle)
    planner_widths(config, 64, path)
    detect_version(config, str(full_bundle))
    assert {"connector_cfg.out_dim_for_gen", "connector_cfg.out_dim_for_vit", "clip_diff_cfg.z_channels"} <= seen
    refused = {f"connector_cfg.{k}" for k in OLD_CONNECTOR_KEYS}  # looked for only to refuse them
    allowed = RELEASED_KEYS | set(UNRELEASED_KEYS) | refused
    assert seen <= allowed, seen - allowed
    package = Path(__file__).resolve().parents[1] / "bernini"
    readers = {"full_config.py", "full.py"}  # the reader, and the tiny bundle's writer
    for source in package.rglob("*.py"):
        if source.name not in readers:
            text = source.read_text(encoding="utf-8")
            pattern = r"[\"'](connector_cfg|clip_diff_cfg|out_dim_for_\w+)[\"']"  # a read of these keys
            assert not re.search(pattern, text), source  # only full_config reads the full config's sections
    documented = (package.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    for key in RELEASED_KEYS | set(UNRELEASED_KEYS):
        assert f"`{key}`" in documented, key


@pytest.mark.parametrize(
    "connector, match",
    [
        ({"out_gen": 40, "out_vit": 48}, "out_dim_for_gen / out_dim_for_vit"),
        ({"out_dim_for_gen": 40, "out_dim_for_vit": "48"}, "connector_cfg.out_dim_for_vit must be a positive integer"),
    ],
)
def test_old_or_bad_connector_widths_are_one_line_errors(
    full_bundle, one_line_error, connector, match, bundle_with_config
):
    bundle = bundle_with_config(full_bundle, connector_cfg=connector)
    one_line_error(load_planner, FullBundle.open(bundle), torch.float32, match=match)


def test_broken_bundles_are_one_line_errors(full_bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(full_bundle, broken, ignore=shutil.ignore_patterns("vae"))
    with pytest.raises(WeightsError, match="lacks vae") as info:
        FullBundle.open(broken)
    assert "\n" not in str(info.value)
    shutil.copytree(full_bundle / "vae", broken / "vae")
    config = json.loads((broken / "mllm" / "config.json").read_text())
    config["text_config"] = {**config.get("text_config", {}), "hidden_size": 32}
    config["hidden_size"] = 32
    (broken / "mllm" / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="planner") as info:
        load_planner(FullBundle.open(broken), torch.float32)
    assert "\n" not in str(info.value)


def test_half_precision_keeps_what_from_pretrained_keeps_in_fp32(full_bundle):
    """UMT5's ``wo`` and the experts' fp32 modules stay fp32 in a bf16 load, as diffusers/transformers keep them."""
    parts = load_renderer_parts(FullBundle.open(full_bundle), torch.bfloat16)
    encoder = parts["text_encoder"]
    assert encoder.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    assert encoder.shared.weight.dtype == torch.bfloat16
    kept = parts["transformer"]._keep_in_fp32_modules
    fp32 = [n for n, p in parts["transformer"].named_parameters() if p.dtype == torch.float32]
    assert fp32 and all(any(k in n.split(".") for k in kept) for n in fp32)
