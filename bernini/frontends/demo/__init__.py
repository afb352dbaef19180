"""The Gradio demo: ``python gradio_demo.py ...`` or ``bernini demo ...`` (upstream's ``gradio_demo.py`` flags).

Every generation goes through :func:`bernini.runner.run_job`, exactly like the command line; the demo
only turns UI values into a :class:`~bernini.request.GenerationRequest`, feeds the progress bar, routes
cancellation and shows the result. Under ``torchrun`` rank 0 serves the UI and broadcasts each request
(a plain dict) to the other ranks, which run the same :meth:`DemoBackend.execute` call.

Deliberate differences from upstream, which binds 0.0.0.0 with no limits:

* it listens on 127.0.0.1 unless ``--host`` says otherwise, with optional ``--auth user:password``;
* uploads are capped (``--max_file_size``) and so is the frame count (``--max_frames``);
* one generation runs at a time, with at most ``--queue_size`` waiting;
* uploads (Gradio's temp/cache dir) and outputs stay under ``--save_dir``.

Modules, from the top: :mod:`.app` (flags, settings, this rank's bring-up, ``main``), :mod:`.layout`
(the Blocks UI), :mod:`.handlers` (UI values → request, errors → one line) and :mod:`.backend`
(running requests on every rank).
"""

from .app import build_parser, main, parse_auth, serve
from .backend import DemoBackend, GenerationCancelled, output_path, worker_loop
from .handlers import TASK_CHOICES, build_request, route_media
from .layout import task_updates
from .settings import DemoSettings

__all__ = [
    "TASK_CHOICES",
    "DemoBackend",
    "DemoSettings",
    "GenerationCancelled",
    "build_parser",
    "build_request",
    "main",
    "output_path",
    "parse_auth",
    "route_media",
    "serve",
    "task_updates",
    "worker_loop",
]
