"""Multi-process inference under ``torchrun``: Ulysses sequence parallel, CFG parallel, data parallel.

The world is split as ``world = dp × cfg × ulysses`` (see :mod:`bernini.parallel.layout`):

* a **Ulysses group** (``--ulysses U``, consecutive ranks) shards one forward's packed tokens and
  all-to-alls them around self-attention (:mod:`bernini.parallel.ulysses`);
* a **CFG group** (``--cfg_parallel [C]``) spreads a step's guidance branches over C Ulysses groups
  and all-gathers the predictions (:mod:`bernini.parallel.cfg`);
* a **task group** (the ``cfg × ulysses`` ranks that serve one task together) takes every ``dp``-th
  task of the list; its first rank decodes and writes (:mod:`bernini.parallel.driver`).

Nothing here is imported by the single-process path; ``bernini.cli`` imports the driver only when a
parallel run is asked for.
"""
