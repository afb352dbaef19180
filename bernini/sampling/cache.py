"""Step caching: cache hooks on the experts for one generation, and the skipped-forward count.

``firstblock`` and ``magcache`` are diffusers' own hooks; ``teacache`` (which diffusers lacks) and the
MagCache calibration recorder are small diffusers ``ModelHook`` s written here. All of them sit on the
transformer blocks, so they serve the packed forward (``forward(conditions=...)``) as they serve
diffusers' own. The sampler runs every guidance branch in its own cache context
(:func:`bernini.sampling.sampler.cache_scope`); every hook keeps its state per context through a diffusers
``StateManager``, so each branch compares against its own history, and each expert has its own hooks, so
the high- and low-noise experts never mix theirs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from ..errors import BerniniError
from .cachefile import write_magcache_calibration
from .presets import CacheSettings

_HEAD_HOOK = "bernini_step_cache_head"
_BLOCK_HOOK = "bernini_step_cache_block"


@dataclass
class TeaCacheConfig:
    """TeaCache on one expert. The indicator is the relative L1 change of block 0's timestep modulation
    (``temb``: Wan's ``e0``, ``[B, 6, dim]``) since the history's previous forward, rescaled by the
    polynomial ``coefficients`` (highest power first; None: unscaled, clamped at 0 since it estimates
    a size of change), and accumulated over skipped forwards; blocks are skipped while the sum stays under
    ``threshold``. The first ``warmup`` forwards of a history always run."""

    threshold: float
    coefficients: tuple[float, ...] | None = None
    warmup: int = 1


@dataclass
class MagCacheCalibration:
    """Record MagCache's per-step residual magnitude ratio of every history; skip nothing."""

    histories: list


class _HeadState(BaseState):
    def __init__(self, histories: list | None = None) -> None:
        super().__init__()
        self.histories = histories
        self.reset()

    def reset(self) -> None:
        self.head_input: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.modulation: torch.Tensor | None = None
        self.accumulated = 0.0
        self.forwards = 0
        self.skip = False
        self.ratios: list[float] = []
        if self.histories is not None:
            self.histories.append(self.ratios)


def _rescale(coefficients: tuple[float, ...] | None, value: float) -> float:
    if coefficients is None:
        return value
    out = 0.0
    for c in coefficients:
        out = out * value + c
    return max(out, 0.0)


class _HeadHook(ModelHook):
    """On block 0: TeaCache's skip decision (then input + the history's last residual), or the
    calibration's record of the input."""

    _is_stateful = True

    def __init__(self, state_manager: StateManager, config: TeaCacheConfig | MagCacheCalibration) -> None:
        super().__init__()
        self.state_manager = state_manager
        self.config = config

    @torch.compiler.disable
    def new_forward(self, module: torch.nn.Module, hidden_states, encoder_hidden_states, temb, *args, **kwargs):
        state: _HeadState = self.state_manager.get_state()
        state.head_input = hidden_states
        state.skip = False
        config = self.config
        if isinstance(config, TeaCacheConfig):
            previous, state.modulation = state.modulation, temb.detach().float()
            usable = state.residual is not None and state.residual.shape == hidden_states.shape
            if previous is not None and usable and state.forwards >= config.warmup:
                change = ((state.modulation - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12)).item()
                state.accumulated += _rescale(config.coefficients, change)
                state.skip = state.accumulated < config.threshold
            if not state.skip:
                state.accumulated = 0.0
        state.forwards += 1
        if state.skip:
            return hidden_states + state.residual.to(hidden_states.device)
        return self.fn_ref.original_forward(hidden_states, encoder_hidden_states, temb, *args, **kwargs)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        return module


class _BlockHook(ModelHook):
    """On every later block: pass the input through while the head skipped; on the last block keep the
    residual of a computed forward (and, calibrating, its magnitude ratio to the previous one)."""

    _is_stateful = True

    def __init__(self, state_manager: StateManager, is_tail: bool, calibrate: bool) -> None:
        super().__init__()
        self.state_manager = state_manager
        self.is_tail = is_tail
        self.calibrate = calibrate

    @torch.compiler.disable
    def new_forward(self, module: torch.nn.Module, hidden_states, *args, **kwargs):
        state: _HeadState = self.state_manager.get_state()
        if state.skip:
            return hidden_states
        output = self.fn_ref.original_forward(hidden_states, *args, **kwargs)
        if self.is_tail:
            residual = output - state.head_input
            if self.calibrate:
                state.ratios.append(_magnitude_ratio(residual, state.residual))
            state.residual = residual
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        return module


def _magnitude_ratio(current: torch.Tensor, previous: torch.Tensor | None) -> float:
    """MagCache's ratio: the mean over tokens of ‖r_t‖ / ‖r_{t-1}‖ (1.0 for a history's first step)."""
    if previous is None or previous.shape != current.shape:
        return 1.0
    norm = torch.linalg.vector_norm
    return (norm(current.float(), dim=-1) / (norm(previous.float(), dim=-1) + 1e-8)).mean().item()


def _apply_own_hooks(expert: torch.nn.Module, config: TeaCacheConfig | MagCacheCalibration) -> None:
    histories = config.histories if isinstance(config, MagCacheCalibration) else None
    manager = StateManager(_HeadState, (histories,), {})
    blocks = list(expert.blocks)
    if len(blocks) < 2:
        raise BerniniError("TeaCache / MagCache calibration needs an expert with at least two blocks")
    HookRegistry.check_if_exists_or_initialize(blocks[0]).register_hook(_HeadHook(manager, config), _HEAD_HOOK)
    calibrate = histories is not None
    for index, block in enumerate(blocks[1:], start=2):
        hook = _BlockHook(manager, index == len(blocks), calibrate)
        HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, _BLOCK_HOOK)
    registry = HookRegistry.check_if_exists_or_initialize(expert)
    if hasattr(registry, "invalidate_child_registries_cache"):  # diffusers > 0.35 caches the block registries
        registry.invalidate_child_registries_cache()
    # CacheMixin's own switch: ``is_cache_enabled`` and ``cache_context`` then work for these hooks too.
    expert._cache_config = config


def _remove_own_hooks(expert: torch.nn.Module) -> None:
    registry = HookRegistry.check_if_exists_or_initialize(expert)
    registry.remove_hook(_HEAD_HOOK, recurse=True)
    registry.remove_hook(_BLOCK_HOOK, recurse=True)
    if hasattr(registry, "invalidate_child_registries_cache"):
        registry.invalidate_child_registries_cache()
    expert._cache_config = None


def magcache_available() -> bool:
    """Whether the installed diffusers has MagCache hooks (0.35.2 has none)."""
    try:
        from diffusers.hooks import MagCacheConfig  # noqa: F401
    except ImportError:
        return False
    return True


def cache_configs(settings: CacheSettings, steps: Sequence[int]) -> list:
    """One hook configuration per expert (``steps``: how many sampling steps each expert runs)."""
    if settings.kind == "firstblock":
        from diffusers.hooks import FirstBlockCacheConfig

        return [FirstBlockCacheConfig(threshold=settings.threshold) for _ in steps]
    if settings.kind == "teacache":
        return [TeaCacheConfig(settings.threshold, settings.coefficients) for _ in steps]
    if not magcache_available():
        import diffusers

        raise BerniniError(f"--cache magcache needs a diffusers with MagCache hooks; {diffusers.__version__} has none")
    if settings.calibrating:
        return [MagCacheCalibration([]) for _ in steps]
    if len(settings.ratios) != len(steps):
        raise BerniniError(
            f"the MagCache calibration {settings.calibration} holds ratios for {len(settings.ratios)} expert(s); "
            f"this model has {len(steps)}: calibrate again with a new file"
        )
    from diffusers.hooks import MagCacheConfig

    return [
        MagCacheConfig(threshold=settings.threshold, num_inference_steps=max(n, 1), mag_ratios=list(ratios))
        for ratios, n in zip(settings.ratios, steps, strict=True)
    ]


class ComputedForwards:
    """Counts the samples whose forward reached the last block's FFN: a skipped forward never does."""

    def __init__(self, experts: Sequence[torch.nn.Module]) -> None:
        self.computed = 0
        self.handles = [expert.blocks[-1].ffn.register_forward_hook(self._count) for expert in experts]

    def _count(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.computed += int(args[0].shape[0])

    def skipped(self, forwards: int) -> int:
        return forwards - self.computed

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _calibrated_ratios(config: MagCacheCalibration) -> list[float]:
    """One ratio per step of the expert: the mean over its histories (branches) of each step's ratio."""
    histories = [h for h in config.histories if h]
    if not histories:
        return []
    length = min(len(h) for h in histories)
    return [sum(h[i] for h in histories) / len(histories) for i in range(length)]


@contextmanager
def step_cache(
    experts: Sequence[torch.nn.Module], settings: CacheSettings | None, steps: Sequence[int] | None = None
) -> Iterator[ComputedForwards | None]:
    """Enable the planned cache on every expert for the duration of one generation (None: no cache).

    ``steps`` (sampling steps per expert, in ``experts`` order) sizes MagCache's ratios; a MagCache
    calibration run writes its file when the generation completes."""
    if settings is None:
        yield None
        return
    steps = list(steps) if steps is not None else [0] * len(experts)
    configs = cache_configs(settings, steps)
    own = (TeaCacheConfig, MagCacheCalibration)
    enabled = []
    try:
        for expert, config in zip(experts, configs, strict=True):
            if isinstance(config, own):
                _apply_own_hooks(expert, config)
            else:
                expert.enable_cache(config)
            enabled.append(expert)
        counter = ComputedForwards(experts)
        try:
            yield counter
        finally:
            counter.remove()
        if settings.calibrating:
            ratios = [_calibrated_ratios(c) for c in configs]
            write_magcache_calibration(settings.calibration, sum(steps), ratios)
    finally:
        for expert, config in zip(enabled, configs, strict=False):
            if isinstance(config, own):
                _remove_own_hooks(expert)
            else:
                expert.disable_cache()
