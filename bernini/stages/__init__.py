"""The pipeline's stages, each a function ``stage(batch, components, runtime) -> batch`` over one
:class:`~bernini.stages.batch.RenderBatch`, in the order :meth:`bernini.pipeline.BerniniPipeline.generate`
runs them: media (:mod:`.media`) → prompt enhancer and UMT5 (:mod:`.text`) → the full model's planner
(:mod:`.planning`) → noise and sampling (:mod:`.denoise`) → VAE decode (:mod:`.decode`). What the pipeline is
made of and where it runs are :class:`~bernini.stages.components.Components` and
:class:`~bernini.stages.components.Runtime`."""
