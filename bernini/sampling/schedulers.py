"""The scheduler of one generation: UniPC (default), flow-match Euler, or one the user set on the pipeline.

Each scheduler class names its flow shift differently (UniPC ``flow_shift``, flow-match Euler
``shift``); :func:`build_scheduler` passes the plan's shift under the right name, so a swapped-in
scheduler keeps its class and gets the shift that was asked for.
"""

from __future__ import annotations

import inspect

import numpy as np

from ..errors import BerniniError

NAMES = {"UniPCMultistepScheduler": "unipc", "FlowMatchEulerDiscreteScheduler": "flow_match_euler"}
SHIFT_KEYS = ("flow_shift", "shift")


def scheduler_name(scheduler) -> str:
    """``unipc`` / ``flow_match_euler`` for the two reference schedulers, else the class name."""
    return NAMES.get(type(scheduler).__name__, type(scheduler).__name__)


def _with_shift(cls, config, flow_shift: float):
    key = next((k for k in SHIFT_KEYS if k in config), None)
    if key is None:
        raise BerniniError(
            f"scheduler {cls.__name__} has no flow shift setting; set pipe.scheduler to a UniPC or flow-match scheduler"
        )
    return cls.from_config(config, **{key: flow_shift})


def build_scheduler(name: str, flow_shift: float, current, unipc_config):
    """A fresh scheduler called ``name`` with ``flow_shift``.

    ``current`` is the pipeline's scheduler (possibly set by the user): its class and config are used
    when it is the one asked for; ``unipc_config`` is the bundle's UniPC config.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if scheduler_name(current) == name:
        return _with_shift(type(current), current.config, flow_shift)
    if name == "unipc":
        return _with_shift(UniPCMultistepScheduler, unipc_config, flow_shift)
    if name == "flow_match_euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=flow_shift)
    raise BerniniError(f"unknown scheduler {name!r}; choose unipc or flow_match_euler")


def reference_flow_sigmas(num_inference_steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """Unshifted UniPC flow sigmas of the reference (diffusers 0.35): ``flip(1 - linspace(1, 1/T, N+1))[:-1]``.

    Later diffusers releases start at 1.0 instead of 0.999, which moves every timestep (and the
    expert switch: 13 instead of 12 high-noise steps at shift 3), so the reference values are passed in.
    """
    alphas = np.linspace(1.0, 1.0 / num_train_timesteps, num_inference_steps + 1)
    return np.flip(1.0 - alphas)[:-1].copy()


def set_timesteps(scheduler, num_inference_steps: int, device=None, sigmas=None) -> None:
    """``scheduler.set_timesteps`` with the reference's flow sigmas where the scheduler takes custom sigmas.

    ``sigmas`` (a preset's, before the shift) replace them; the scheduler applies its shift.

    The loop starts at step 0 (``set_begin_index``): diffusers otherwise finds the first step by its timestep and,
    when the integer timesteps repeat at the start (UniPC at shift 5 from about 300 steps: 999, 999, ...), takes
    the second match, so every later step is one ahead and the last one fails (``this_order > 0``). With distinct
    timesteps the first match is step 0 anyway, so nothing else changes."""
    config = scheduler.config
    takes_sigmas = "sigmas" in inspect.signature(scheduler.set_timesteps).parameters
    if sigmas is not None:
        if not takes_sigmas:
            raise BerniniError(f"scheduler {type(scheduler).__name__} cannot take a preset's sigmas")
        scheduler.set_timesteps(device=device, sigmas=list(sigmas))
    elif (
        getattr(config, "use_flow_sigmas", False)
        and takes_sigmas
        and not getattr(config, "use_dynamic_shifting", False)
    ):
        sigmas = reference_flow_sigmas(num_inference_steps, config.num_train_timesteps)
        scheduler.set_timesteps(num_inference_steps, device=device, sigmas=sigmas)
    else:
        scheduler.set_timesteps(num_inference_steps, device=device)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
