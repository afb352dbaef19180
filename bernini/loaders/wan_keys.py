"""Original Wan (``WanModel``) parameter names ↔ diffusers ``WanTransformer3DModel`` names.

The community's single files (Comfy-Org, Kijai, GGUF, mlx, Wan2GP) keep the original names. The map is
the inverse of diffusers' ``convert_wan_to_diffusers``; inside a block, the affine cross-attention norm
is ``norm3`` in Wan and ``norm2`` in diffusers (the two swap; the other norms hold no parameters).
"""

from __future__ import annotations

COMFY_PREFIX = "model.diffusion_model."

TOP_LEVEL = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "head.modulation": "scale_shift_table",
}
IN_BLOCK = {
    "modulation": "scale_shift_table",
    "norm3": "norm2",
    "norm2": "norm3",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
for _native, _ours in (("self_attn", "attn1"), ("cross_attn", "attn2")):
    IN_BLOCK.update(
        {
            f"{_native}.q": f"{_ours}.to_q",
            f"{_native}.k": f"{_ours}.to_k",
            f"{_native}.v": f"{_ours}.to_v",
            f"{_native}.o": f"{_ours}.to_out.0",
            f"{_native}.norm_q": f"{_ours}.norm_q",
            f"{_native}.norm_k": f"{_ours}.norm_k",
        }
    )
TOP_LEVEL_BACK = {v: k for k, v in TOP_LEVEL.items()}
IN_BLOCK_BACK = {v: k for k, v in IN_BLOCK.items()}


def _rename(name: str, table: dict[str, str]) -> str | None:
    """Replace the longest module path of ``table`` that ``name`` starts with (whole dot-separated parts)."""
    for module in sorted(table, key=len, reverse=True):
        if name == module or name.startswith(module + "."):
            return table[module] + name[len(module) :]
    return None


def _convert(key: str, top: dict[str, str], block: dict[str, str]) -> str | None:
    parts = key.split(".")
    if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit():
        renamed = _rename(".".join(parts[2:]), block)
        return None if renamed is None else f"blocks.{parts[1]}.{renamed}"
    return _rename(key, top)


def native_to_diffusers(key: str) -> str | None:
    """The diffusers name of an original Wan key (``None`` for a key Wan2.2-T2V does not have)."""
    if key.startswith(COMFY_PREFIX):
        key = key[len(COMFY_PREFIX) :]
    return _convert(key, TOP_LEVEL, IN_BLOCK)


def diffusers_to_native(key: str) -> str | None:
    """The original Wan name of a diffusers key."""
    return _convert(key, TOP_LEVEL_BACK, IN_BLOCK_BACK)


def is_native(keys: list[str] | set[str]) -> bool:
    """Whether a checkpoint uses the original Wan names (its blocks hold ``self_attn``, not ``attn1``)."""
    return any(".self_attn." in k or k.startswith(("head.", COMFY_PREFIX + "head.")) for k in keys)
