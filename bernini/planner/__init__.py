"""The full Bernini's planner (``../shared/spec/bernini-full.md``): building blocks.

What is here is the planner's own math, each piece tested against the spec's invariants (§6.2):
target-slot geometry (:mod:`.geometry`), the hybrid attention mask (:mod:`.mask`), the masked-planning
schedule and its RNG contract (:mod:`.schedule`), the ViT-embedding flow decoder and its three-way CFG
sampler (:mod:`.flow`), the connector (:mod:`.connector`), the renderer contexts (:mod:`.contexts`), the
per-branch token streams and mRoPE positions (:mod:`.packing`), loading the published
``Bernini-Diffusers`` layout (:mod:`.loading`; ``bernini.tiny.full`` writes a tiny one) and running the
planning loop over the Qwen passes (:mod:`.run`; the full model's renderer modes are declared in
:mod:`bernini.sampling.guidance`); the source items' vision-tower inputs and features and the target placeholder's item
(:mod:`.vision`: ``planner_visuals``, ``vision_features``); the planner as a pipeline stage producing the four
renderer contexts (:mod:`.stage`, run by ``bernini.stages.planning``); the shipped per-task settings
(:mod:`.presets`); and the full model's memory plan at the published sizes (:mod:`.memory`).
"""
