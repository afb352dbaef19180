"""The full model's planner stage: the source items' ViT features, the planning loop and the connector, on the
device only while they work (unless everything fits), then released; run once per task group through
``runtime.share_planning``."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import BerniniError
from ..resolved import ResolvedRequest
from ..sampling.guidance import Text
from ..text import token_counts
from .batch import RenderBatch
from .components import Components, Runtime


def plan_stage(batch: RenderBatch, components: Components, runtime: Runtime) -> RenderBatch:
    """The planner's four contexts join the UMT5 ones; its record goes to ``batch.planning``.

    With context windows over a source video the planner runs once per window, with the same seed, over the
    window's slice of the sources (its ViT target tokens describe a whole clip and cannot be cut in time); each
    window's guidance reads its own plan (``batch.window_texts``). Without a source video every window has the same
    planner input, so one plan for a window's length serves all of them."""
    size = (batch.height, batch.width)
    windows = window_slices(batch, components)
    batch.report("plan", 0, len(windows))

    def plan_all() -> list[tuple[dict[Text, torch.Tensor], dict[str, Any]]]:
        plans = []
        for start_s, frames in windows:
            plans.append(plan_contexts(components, runtime, batch.resolved, batch.text, size, start_s, frames))
            batch.report("plan", len(plans), len(windows))
        return plans

    plans = runtime.share_planning(plan_all)
    contexts, batch.planning = plans[0]
    count = len(batch.context_windows(components.latent_grid))
    if count > 1:
        batch.window_texts = [plans[min(index, len(plans) - 1)][0] for index in range(count)]
        batch.planning = {**batch.planning, "windows": [record for _, record in plans]}
    batch.text = {**batch.text, **contexts}
    return batch


def window_slices(batch: RenderBatch, components: Components) -> list[tuple[float, int | None]]:
    """What the planner runs on: ``(start in seconds, pixel frames)`` per plan; ``[(0, None)]``: the whole clip."""
    from ..sampling.windows import pixel_span

    spans = batch.context_windows(components.latent_grid)
    if len(spans) == 1:
        return [(0.0, None)]
    fps, temporal = batch.resolved.media.fps, components.latent_grid.temporal
    slices = [(start / fps, frames) for start, frames in (pixel_span(span, temporal) for span in spans)]
    return slices if batch.resolved.media.video else slices[:1]


def plan_contexts(
    components: Components,
    runtime: Runtime,
    resolved: ResolvedRequest,
    text: dict[Text, torch.Tensor],
    size: tuple[int, int] | None = None,
    start_s: float = 0.0,
    frames: int | None = None,
) -> tuple[dict[Text, torch.Tensor], dict[str, Any]]:
    """The Qwen passes, the flow decoder and the connector. ``size`` is the rendered target's, the planner's
    target without a source video when the plan follows a source image (0 × 0). ``start_s`` and ``frames``: a
    context window's slice (None: the request's frames from the start)."""
    from ..planner.run import PlannerSettings
    from ..planner.stage import PlanningRequest, T5Rows, run_planning
    from ..planner.vision import planner_visuals, vision_features

    planner = components.planner
    if planner is None:
        raise BerniniError("this plan is for the full Bernini model; load a full bundle (model_type 'bernini')")
    settings = resolved.planner
    limit = components.renderer_config.max_sequence_length
    lengths = [min(n, limit) for n in token_counts([resolved.t5_text, resolved.t5_negative_text], components.tokenizer)]
    t5 = T5Rows(text[Text.PROMPT], lengths[0], text[Text.NEGATIVE], lengths[1])
    geometry, media = resolved.geometry, resolved.media
    height, width = (geometry.height, geometry.width) if geometry.fixed_size or size is None else size
    items = planner_visuals(
        planner.image_processor,
        videos=media.video,
        image=media.image,
        images=media.images,
        fps=media.fps,
        num_frames=geometry.frames if frames is None else frames,
        height=height,
        width=width,
        video_fps=media.video_fps,
        start_s=start_s,
    )
    request = PlanningRequest(
        task=resolved.task.name,
        prompt=resolved.prompt,
        negative_prompt=resolved.negative_prompt,
        sources=items.source_items,
        target=items.target,
        settings=PlannerSettings(
            settings.planning_steps,
            settings.vit_steps,
            settings.text_scale,
            settings.image_scale,
            batch_branches=resolved.batch_branches,
        ),
        seed=resolved.seed,
    )
    modules = components.planner_modules
    for module in modules:
        runtime.placement.activate(module, True)
    try:
        features = vision_features(planner.qwen, items.sources)

        def fits(branches: int, tokens: int) -> bool:
            return planner_batch_fits(components, runtime, branches, tokens)

        return run_planning(planner, request, features, t5, batch_fits=fits)
    finally:
        for module in modules:
            runtime.placement.activate(module, False)


def planner_batch_fits(components: Components, runtime: Runtime, branches: int, tokens: int) -> bool:
    """Whether ``branches`` padded Qwen passes of ``tokens`` tokens fit in the device's free memory
    (:func:`bernini.planner.memory.planner_batch_fits`: always on the CPU)."""
    from ..planner.memory import planner_batch_fits as fits

    return fits(branches, tokens, components.planner.qwen.config, runtime.dtype, runtime.device)
