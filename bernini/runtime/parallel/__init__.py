"""Multi-process inference under ``torchrun``: Ulysses sequence parallel, CFG parallel, data parallel.

The world is split as ``world = dp × cfg × ulysses`` (see :mod:`bernini.runtime.parallel.layout`):

* a **Ulysses group** (``--ulysses U``, consecutive ranks) shards one forward's packed tokens and
  all-to-alls them around self-attention (:mod:`bernini.runtime.parallel.ulysses`);
* a **CFG group** (``--cfg_parallel [C]``) spreads a step's guidance branches over C Ulysses groups
  and all-gathers the predictions (:mod:`bernini.runtime.parallel.cfg`);
* a **task group** (the ``cfg × ulysses`` ranks that serve one task together) takes every ``dp``-th
  task of the list; its first rank decodes and writes.

These are services: the front ends bring them up through :mod:`bernini.frontends.launch`, and the
single-process path never imports them. ``python -m bernini.frontends.parallel_check`` (a front end) compares
parallel layouts with the single-process result.
"""
