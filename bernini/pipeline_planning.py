"""The full model's planner stage on the pipeline (a mixin, as loading is): the source items' ViT features, the
planning loop and the connector, run on the device only while they work (unless everything fits), then released."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .errors import BerniniError
from .guidance import Text
from .text import token_counts

if TYPE_CHECKING:
    from .plan import GenerationPlan


class PlanningMixin:
    @property
    def planner_modules(self) -> list[torch.nn.Module]:
        """The full model's planner parts (Qwen2.5-VL, connector, ViT decoder); none for Bernini-R."""
        if self.planner is None:
            return []
        return [self.planner.qwen, self.planner.connector, self.planner.vit_decoder]

    def plan_contexts(
        self, plan: GenerationPlan, text: dict[Text, torch.Tensor], size: tuple[int, int] | None = None
    ) -> tuple[dict[Text, torch.Tensor], dict[str, Any]]:
        """The full model's planner stage: the Qwen passes, the flow decoder and the connector, on the device
        only while they work (unless everything fits), then released. ``size`` is the rendered target's, the
        planner's target without a source video when the plan follows a source image (0 × 0)."""
        from .planner.run import PlannerSettings
        from .planner.stage import PlanningRequest, T5Rows, run_planning
        from .planner.vision import planner_visuals, vision_features

        if self.planner is None:
            raise BerniniError("this plan is for the full Bernini model; load a full bundle (model_type 'bernini')")
        settings = plan.planner
        limit = self.renderer_config.max_sequence_length
        lengths = [min(n, limit) for n in token_counts([plan.t5_text, plan.t5_negative_text], self.tokenizer)]
        t5 = T5Rows(text[Text.PROMPT], lengths[0], text[Text.NEGATIVE], lengths[1])
        geometry, media = plan.geometry, plan.media
        height, width = (geometry.height, geometry.width) if geometry.fixed_size or size is None else size
        items = planner_visuals(
            self.planner.image_processor,
            videos=media.video,
            image=media.image,
            images=media.images,
            fps=media.fps,
            num_frames=geometry.frames,
            height=height,
            width=width,
            video_fps=media.video_fps,
        )
        request = PlanningRequest(
            task=plan.task.name,
            prompt=plan.prompt,
            negative_prompt=plan.negative_prompt,
            sources=items.source_items,
            target=items.target,
            settings=PlannerSettings(
                settings.planning_steps,
                settings.vit_steps,
                settings.text_scale,
                settings.image_scale,
                batch_branches=plan.batch_branches,
            ),
            seed=plan.seed,
        )
        modules = self.planner_modules
        for module in modules:
            self.placement.activate(module, True)
        try:
            features = vision_features(self.planner.qwen, items.sources)
            return run_planning(self.planner, request, features, t5, batch_fits=self.planner_batch_fits)
        finally:
            for module in modules:
                self.placement.activate(module, False)

    def planner_batch_fits(self, branches: int, tokens: int) -> bool:
        """Whether ``branches`` padded Qwen passes of ``tokens`` tokens fit in the device's free memory
        (:func:`bernini.planner.memory.planner_batch_fits`: always on the CPU)."""
        from .planner.memory import planner_batch_fits

        return planner_batch_fits(branches, tokens, self.planner.qwen.config, self.dtype, self.device)
