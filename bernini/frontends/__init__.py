"""The front ends' shared layer: argument groups and model loading (:mod:`.options`), the parallel
bring-up (:mod:`.launch`) and the torchrun task loop (:mod:`.torchrun`).

Front ends (``bernini.frontends.cli``, ``bernini.frontends.demo``, ``bernini.frontends.serve``,
``bernini.frontends.parallel_check``, the upstream scripts) sit on top of this; nothing below them imports it.
"""
