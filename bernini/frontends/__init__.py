"""The front ends' shared layer: argument groups and model loading (:mod:`.options`), the parallel
bring-up (:mod:`.launch`) and the torchrun task loop (:mod:`.torchrun`).

Front ends (``bernini.cli``, ``bernini.demo``, ``bernini.parallel.check``, the upstream scripts) sit
on top of this; nothing below them imports it.
"""
