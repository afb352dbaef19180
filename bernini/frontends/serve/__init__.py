"""``bernini serve`` (an HTTP job service with a persistent queue) and ``bernini submit`` (its client).

A front end over the shared layer: ``server`` (flags, bring-up), ``app`` / ``openai_routes`` (routes),
``bodies`` / ``uploads`` (request bodies and upload checks), ``service`` (submitting and viewing jobs),
``schemas`` (pydantic bodies), ``store`` (the SQLAlchemy queue), ``worker`` (runs jobs through
:func:`bernini.runner.run_job`), ``client`` (``bernini submit``). Nothing below the front ends imports it.
"""
