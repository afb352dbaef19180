"""The Gradio demo: ``python gradio_demo.py ...`` or ``bernini demo ...`` (upstream's ``gradio_demo.py`` flags).

Every generation goes through :func:`bernini.runner.run_job`, exactly like the command line; this module
only turns UI values into a :class:`~bernini.request.GenerationRequest`, feeds the progress bar, routes
cancellation and shows the result. Under ``torchrun`` rank 0 serves the UI and broadcasts each request
(a plain dict) to the other ranks, which run the same :meth:`DemoBackend.execute` call.

Deliberate differences from upstream, which binds 0.0.0.0 with no limits:

* it listens on 127.0.0.1 unless ``--host`` says otherwise, with optional ``--auth user:password``;
* uploads are capped (``--max_file_size``) and so is the frame count (``--max_frames``);
* one generation runs at a time, with at most ``--queue_size`` waiting;
* uploads (Gradio's temp/cache dir) and outputs stay under ``--save_dir``.

The module avoids ``from __future__ import annotations``: Gradio finds ``gr.Request`` parameters by
their evaluated annotations.
"""

import argparse
import html
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import BerniniError
from .request import GenerationRequest, validate
from .tasks import GUIDANCE_MODES, TASKS

logger = logging.getLogger("bernini.demo")

TASK_CHOICES: tuple[str, ...] = ("t2i", "t2v", "i2i", "v2v", "mv2v", "r2v", "rv2v", "ads2v")
DEFAULT_TASK = "t2v"


@dataclass(frozen=True)
class TaskInputs:
    """Which UI inputs a task reads: the video tab, the single image (as source or reference), the gallery."""

    video: bool
    image: str  # "none" | "source" | "reference"
    gallery: bool
    hint: str


TASK_INPUTS: dict[str, TaskInputs] = {
    "t2i": TaskInputs(False, "none", False, "text only"),
    "t2v": TaskInputs(False, "none", False, "text only"),
    "i2i": TaskInputs(False, "source", True, "Single image = the image to edit; Multiple images = optional references"),
    "v2v": TaskInputs(True, "none", True, "Video = the clip to edit; Multiple images = optional references"),
    "mv2v": TaskInputs(True, "none", True, "Video = the clip to edit; Multiple images = optional references"),
    "r2v": TaskInputs(False, "reference", True, "Single image and/or Multiple images = the subject(s), at least one"),
    "rv2v": TaskInputs(
        True, "reference", True, "Video = the clip to edit; Single image and/or Multiple images = references (1+)"
    ),
    "ads2v": TaskInputs(
        True, "reference", True, "Video = the main clip, then the clip to insert; Single image = the product"
    ),
}


def task_hint(task: str) -> str:
    """The input hint shown under the task dropdown."""
    return f"**{task}**: {TASKS[task].description}. Inputs: {TASK_INPUTS[task].hint}."


# Guidance defaults a task change puts back (the frame count depends on the task too).
GUIDANCE_DEFAULTS: dict[str, float] = {
    "omega_vid": 1.25,
    "omega_img": 4.5,
    "omega_txt": 4.0,
    "omega_scale": 0.8,
    "eta": 0.5,
    "momentum": 0.0,
}
DEFAULT_FRAMES = 81
KEEPALIVE_S = 600.0
# UI parameters in the order of the ``generate`` endpoint's inputs (after prompt, task and media).
NUMERIC_PARAMETERS: tuple[str, ...] = (
    "max_image_size",
    "num_frames",
    "num_inference_steps",
    "flow_shift",
    "seed",
    "fps",
    "height",
    "width",
    "omega_vid",
    "omega_img",
    "omega_txt",
    "omega_scale",
    "eta",
    "momentum",
)


class GenerationCancelled(Exception):
    """Raised from the step callback when the user pressed Stop."""


# ------------------------------------------------------------------------------------------ flags
def build_parser(prog: str = "bernini demo") -> argparse.ArgumentParser:
    from .cli import add_model_args, add_parallel_args, add_pe_args

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Bernini-R Gradio demo (listens on 127.0.0.1 unless --host is given; upstream binds 0.0.0.0)",
    )
    add_model_args(parser)
    server = parser.add_argument_group("server")
    server.add_argument("--port", "--server_port", dest="port", type=int, default=7860)
    server.add_argument(
        "--host",
        "--server_name",
        dest="host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes the demo to the network, as upstream does)",
    )
    server.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    server.add_argument("--auth", default=None, metavar="USER:PASSWORD", help="require this login")
    server.add_argument(
        "--save_dir",
        default=None,
        help="outputs, their sidecars and every upload (default: a new temp dir bernini_gradio_*)",
    )
    server.add_argument("--max_file_size", default="200mb", help="largest accepted upload (e.g. 200mb, 1gb)")
    server.add_argument("--max_frames", type=int, default=360, help="largest frame count a request may ask for")
    server.add_argument("--queue_size", type=int, default=20, help="requests that may wait behind the running one")
    gen = parser.add_argument_group("generation defaults")
    gen.add_argument("--flow_shift", type=float, default=5.0, help="the flow-shift slider's start value")
    add_pe_args(parser, "allow the GPT prompt enhancer checkbox")
    add_parallel_args(parser)
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``user:password`` (split at the first colon) or ``None``."""
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise BerniniError("--auth must look like USER:PASSWORD (both non-empty)")
    return user, password


@dataclass
class DemoSettings:
    """Server-wide settings: what the flags fix for every request."""

    save_dir: Path
    use_pe: bool = False
    pe_model: str | None = None
    flow_shift: float = 5.0
    max_frames: int = 360
    use_unipc: bool = True
    use_src_tgt_id: bool = True
    interpolate_src_id: bool = True
    max_trained_src_id: int = 5
    server: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace, serving: bool = True) -> "DemoSettings":
        """``serving`` (rank 0) creates the save dir; the other ranks never write there."""
        if args.max_frames < 1:
            raise BerniniError("--max_frames must be at least 1")
        if args.queue_size < 1:
            raise BerniniError("--queue_size must be at least 1")
        if args.save_dir:
            save_dir = Path(args.save_dir)
        else:
            save_dir = Path(tempfile.mkdtemp(prefix="bernini_gradio_")) if serving else Path(tempfile.gettempdir())
        if serving:
            save_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            save_dir=save_dir.resolve(),
            use_pe=args.use_pe,
            pe_model=args.pe_model,
            flow_shift=args.flow_shift,
            max_frames=args.max_frames,
            use_unipc=args.use_unipc,
            use_src_tgt_id=args.use_src_tgt_id,
            interpolate_src_id=args.interpolate_src_id,
            max_trained_src_id=args.max_trained_src_id,
            server={"host": args.host, "port": args.port, "share": args.share, "auth": args.auth is not None},
        )


# ------------------------------------------------------------------------------------ requests
def _paths(value: Any) -> list[str]:
    """File paths from whatever Gradio hands over: a path, a list of paths, gallery (path, caption) pairs, dicts."""
    if value is None or value == "":
        return []
    if isinstance(value, (str, Path)):
        return [str(value)]
    if isinstance(value, dict):
        inner = value.get("path") or value.get("name") or value.get("video") or value.get("image")
        return _paths(inner)
    if isinstance(value, (tuple, list)):
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], (str, Path)):
            if value[1] is None or not Path(str(value[1])).suffix:  # (path, caption)
                return [str(value[0])]
        out: list[str] = []
        for item in value:
            out.extend(_paths(item))
        return out
    path = getattr(value, "path", None) or getattr(value, "name", None)
    return [str(path)] if path else []


def route_media(task: str, videos: Any, image: Any, gallery: Any) -> tuple[dict[str, Any], list[str]]:
    """Request media for ``task`` from the three inputs, and the inputs it ignored (for the status line).

    The single image is the *source* for i2i and an extra *reference*, placed before the gallery's
    images, for r2v, rv2v and ads2v.
    """
    spec = TASK_INPUTS[task]
    video_paths, image_paths, gallery_paths = _paths(videos), _paths(image), _paths(gallery)
    ignored: list[str] = []
    media: dict[str, Any] = {"video": [], "image": None, "images": []}
    if spec.video:
        media["video"] = video_paths
    elif video_paths:
        ignored.append("video")
    single = image_paths[0] if image_paths else None
    if spec.image == "source":
        media["image"] = single
    elif spec.image == "reference" and single is not None:
        media["images"].append(single)
    elif single is not None:
        ignored.append("single image")
    if spec.gallery:
        media["images"].extend(gallery_paths)
    elif gallery_paths:
        ignored.append("gallery")
    return media, ignored


def build_request(
    settings: DemoSettings,
    prompt: str,
    task: str,
    guidance_mode: str | None,
    media: dict[str, Any],
    values: dict[str, Any],
    output: str | Path,
) -> GenerationRequest:
    """A validated request from UI values; image tasks force one frame, server flags fill the rest."""
    if task not in TASK_INPUTS:
        raise BerniniError(f"pick a task: one of {', '.join(TASK_CHOICES)}")
    if guidance_mode in ("", None):
        guidance_mode = TASKS[task].guidance_mode
    numbers = dict(values)
    if TASKS[task].single_frame:
        numbers["num_frames"] = 1
    frames = numbers.get("num_frames")
    if frames is not None and isinstance(frames, (int, float)) and frames > settings.max_frames:
        raise BerniniError(f"num_frames {frames:g} is over this server's limit of {settings.max_frames}")
    request = GenerationRequest(
        prompt=prompt or "",
        task_type=task,
        guidance_mode=guidance_mode,
        video=media["video"],
        image=media["image"],
        images=media["images"],
        output=str(output),
        use_unipc=settings.use_unipc,
        use_src_tgt_id=settings.use_src_tgt_id,
        interpolate_src_id=settings.interpolate_src_id,
        max_trained_src_id=settings.max_trained_src_id,
        **{k: v for k, v in numbers.items() if v is not None},
    )
    return validate(request)


def output_path(save_dir: Path, task: str, frames: int) -> Path:
    """``{task}_{timestamp}.png|mp4`` in ``save_dir``, never an existing name."""
    suffix = ".png" if frames == 1 else ".mp4"
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    candidate = save_dir / f"{task}_{stamp}{suffix}"
    counter = 1
    while any(candidate.with_suffix(s).exists() for s in (".png", ".mp4")):
        candidate = save_dir / f"{task}_{stamp}_{counter}{suffix}"
        counter += 1
    return candidate


def friendly(message: str, uploads: dict[str, str]) -> str:
    """The error line with Gradio's temp paths replaced by the names the user uploaded, safe to show as HTML."""
    for path, name in sorted(uploads.items(), key=lambda item: -len(item[0])):
        message = message.replace(path, name)
    return html.escape(message, quote=False)  # Gradio renders error text as HTML


# ----------------------------------------------------------------------------------- execution
class Collective:
    """Rank 0 → all ranks object broadcast over a gloo group (a no-op on one process)."""

    def __init__(self, group: Any = None) -> None:
        import torch.distributed as dist

        self.enabled = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.enabled else 0
        self.group = group

    def broadcast(self, obj: Any = None) -> Any:
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def share(self, call: Callable[[], Any]) -> Any:
        """Run ``call`` on rank 0 only (the prompt enhancer) and hand its result to every rank."""
        if not self.enabled:
            return call()
        result = None
        if self.rank == 0:
            try:
                result = ("ok", call())
            except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
                result = ("error", exc)
        kind, value = self.broadcast(result)
        if kind == "error":
            raise value
        return value


class DemoBackend:
    """Runs demo requests through :func:`run_job`; shared by the UI (rank 0) and the worker ranks."""

    def __init__(self, pipe: Any, settings: DemoSettings, collective: Collective | None = None) -> None:
        self.pipe = pipe
        self.settings = settings
        self.collective = collective or Collective()
        self.lock = threading.Lock()  # a cancelled job keeps its thread until its next step; never overlap
        self.cancel_flags: dict[str, threading.Event] = {}

    def submit(
        self,
        payload: dict[str, Any],
        progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None,
    ):
        """Rank 0: broadcast the request to the other ranks, then run it here too."""
        with self.lock:
            target = Path(payload["request"]["output"])
            if any(target.with_suffix(s).exists() for s in (".png", ".mp4")):  # taken while this one waited
                frames = 1 if target.suffix == ".png" else 2
                task = payload["request"]["task_type"]
                payload = {
                    **payload,
                    "request": {**payload["request"], "output": str(output_path(target.parent, task, frames))},
                }
            self.collective.broadcast({"kind": "generate", **payload})
            return self.execute(payload, progress=progress, cancel=cancel)

    def execute(
        self,
        payload: dict[str, Any],
        progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None,
    ):
        """Every rank: rebuild the request from the payload and call :func:`run_job` (rank 0 writes)."""
        from .runner import run_job

        request = GenerationRequest(**payload["request"])
        total = request.num_inference_steps
        collective = self.collective

        def on_step(_pipe: Any, index: int, _t: Any, _state: dict) -> None:
            stop = bool(cancel is not None and cancel.is_set())
            if collective.enabled:
                stop = bool(collective.broadcast(stop))
            if stop:
                raise GenerationCancelled("stopped by the user")
            if progress is not None:
                progress(index + 1, total)

        return run_job(
            self.pipe,
            request,
            use_pe=payload.get("use_pe", False),
            pe_model=self.settings.pe_model,
            write=collective.rank == 0,
            log=lambda line: logger.info("%s", line),
            share=collective.share if collective.enabled else None,
            extra_record=payload.get("extra_record"),
            callback=on_step,
        )

    def keep_alive(self, interval_s: float = KEEPALIVE_S) -> threading.Event:
        """Ping the waiting ranks now and then, so an idle demo never hits the control group's timeout."""
        stopped = threading.Event()

        def ping() -> None:
            while not stopped.wait(interval_s):
                with self.lock:
                    if not stopped.is_set():
                        self.collective.broadcast({"kind": "ping"})

        if self.collective.enabled:
            threading.Thread(target=ping, name="bernini-demo-keepalive", daemon=True).start()
        return stopped

    def shutdown(self) -> None:
        with self.lock:
            self.collective.broadcast({"kind": "shutdown"})


def worker_loop(backend: DemoBackend) -> int:
    """Ranks other than 0: run every broadcast request until the "shutdown" message."""
    while True:
        message = backend.collective.broadcast(None)
        kind = message.get("kind") if isinstance(message, dict) else None
        if kind == "ping":
            continue
        if kind != "generate":
            return 0
        try:
            backend.execute(message)
        except (BerniniError, GenerationCancelled) as exc:
            logger.info("rank %d: request ended: %s", backend.collective.rank, exc)
        except Exception:
            logger.exception("rank %d: request failed", backend.collective.rank)


def load_parallel_pipeline(args: argparse.Namespace) -> tuple[Any, Any]:
    """Hook into :mod:`bernini.parallel`: join torchrun's group, load, install the Ulysses/CFG runners.

    Returns ``(pipe, control_group)``. Every rank serves every request, so the Ulysses × CFG degrees
    must cover the whole world (no data parallelism in the demo).
    """
    from .parallel import groups as pg
    from .parallel import worker
    from .parallel.driver import cfg_degree, model_heads, timeout_s
    from .parallel.layout import LaunchEnv, Layout, check_degrees

    env = LaunchEnv.from_environ()
    ulysses, cfg = int(args.ulysses), cfg_degree(args)
    check_degrees(env.world, ulysses, cfg, model_heads(args.config))
    if ulysses * cfg != env.world:
        raise BerniniError(
            f"the demo runs each request on every rank: --ulysses ({ulysses}) × --cfg_parallel ({cfg}) "
            f"must equal the number of processes ({env.world})"
        )
    timeout = timeout_s(args)
    device = pg.rank_device(args.device, env.local_rank)
    layout = Layout(env.world, env.rank, ulysses, cfg)
    if env.world > 1:
        pg.init(env, device, timeout)
    groups = pg.build(layout, timeout) if env.world > 1 else pg.Groups(layout, None, None, None, None)
    pipe = worker.load(args, device, groups.control, layout.rank)
    worker.install(pipe, groups)
    return pipe, groups.control


# ------------------------------------------------------------------------------------------ UI
def task_updates(task: str) -> tuple[Any, ...]:
    """Outputs of a task change: guidance mode, hint, frames, height/width visibility, guidance defaults."""
    import gradio as gr

    if task not in TASKS:
        task = DEFAULT_TASK
    spec = TASKS[task]
    single = spec.single_frame
    text_only = not TASK_INPUTS[task].video and TASK_INPUTS[task].image == "none"
    return (
        gr.update(value=spec.guidance_mode),
        gr.update(value=task_hint(task)),
        gr.update(value=1 if single else DEFAULT_FRAMES, interactive=not single),
        gr.update(visible=text_only),
        gr.update(visible=text_only),
        *(gr.update(value=v) for v in GUIDANCE_DEFAULTS.values()),
    )


def build_ui(backend: DemoBackend):
    """The Blocks app; the generation endpoint is named ``generate`` for API clients."""
    import gradio as gr

    settings = backend.settings
    max_frames = min(360, settings.max_frames)
    default_frames = min(DEFAULT_FRAMES, max_frames)

    def generate(
        prompt: str,
        task: str,
        guidance_mode: str | None,
        videos: Any,
        image: Any,
        gallery: Any,
        enhance: bool,
        max_image_size: float,
        num_frames: float,
        num_inference_steps: float,
        flow_shift: float,
        seed: float,
        fps: float,
        height: float,
        width: float,
        omega_vid: float,
        omega_img: float,
        omega_txt: float,
        omega_scale: float,
        eta: float,
        momentum: float,
        request: gr.Request,
        progress=gr.Progress(),  # noqa: B008 - Gradio's documented idiom
    ):
        ui = {
            "prompt": prompt,
            "task": task,
            "guidance_mode": guidance_mode,
            "enhance": bool(enhance),
            "max_image_size": max_image_size,
            "num_frames": num_frames,
            "num_inference_steps": num_inference_steps,
            "flow_shift": flow_shift,
            "seed": seed,
            "fps": fps,
            "height": height,
            "width": width,
            "omega_vid": omega_vid,
            "omega_img": omega_img,
            "omega_txt": omega_txt,
            "omega_scale": omega_scale,
            "eta": eta,
            "momentum": momentum,
        }
        uploads: dict[str, str] = {}
        for item in (*_paths(videos), *_paths(image), *_paths(gallery)):
            uploads[item] = Path(item).name
        try:
            if enhance and not settings.use_pe:
                raise BerniniError("the prompt enhancer is off on this server; restart the demo with --use_pe")
            if task not in TASK_INPUTS:
                raise BerniniError(f"pick a task: one of {', '.join(TASK_CHOICES)}")
            media, ignored = route_media(task, videos, image, gallery)
            values = {name: ui[name] for name in NUMERIC_PARAMETERS}
            single = TASKS[task].single_frame or values["num_frames"] == 1
            target = output_path(settings.save_dir, task, 1 if single else 2)
            checked = build_request(settings, prompt, task, guidance_mode, media, values, target)
        except BerniniError as exc:
            raise gr.Error(friendly(str(exc), uploads), print_exception=False) from None
        payload = {
            "request": {
                name: getattr(checked, name) for name in GenerationRequest.field_names() if name not in ("use_pe",)
            },
            "use_pe": bool(enhance),
            "extra_record": {
                "demo": {
                    "ui": ui,
                    "uploads": {
                        "video": [Path(p).name for p in _paths(videos)],
                        "image": next((Path(p).name for p in _paths(image)), None),
                        "gallery": [Path(p).name for p in _paths(gallery)],
                    },
                    "ignored_inputs": ignored,
                    "server": settings.server,
                }
            },
        }
        session = getattr(request, "session_hash", None) or "api"
        cancel = threading.Event()
        backend.cancel_flags[session] = cancel
        progress(0, desc="encoding inputs")

        def on_progress(done: int, total: int) -> None:
            progress((done, total), desc="denoising", unit="steps")

        started = time.perf_counter()
        try:
            result = backend.submit(payload, progress=on_progress, cancel=cancel)
        except GenerationCancelled:
            raise gr.Error("generation stopped", print_exception=False) from None
        except BerniniError as exc:
            raise gr.Error(friendly(str(exc), uploads), print_exception=False) from None
        except Exception as exc:
            logger.exception("generation failed")
            raise gr.Error(
                f"generation failed ({type(exc).__name__}: {exc}); details are in the server log",
                print_exception=False,
            ) from None
        finally:
            if backend.cancel_flags.get(session) is cancel:
                backend.cancel_flags.pop(session, None)
        seconds = time.perf_counter() - started
        output = str(result.output)
        is_video = Path(output).suffix == ".mp4"
        resolved = result.parameters.get("resolved", {})
        status = (
            f"Wrote {Path(output).name} ({resolved.get('frames')} frame(s), {resolved.get('width')}x"
            f"{resolved.get('height')}, guidance {resolved.get('guidance_mode')}) in {seconds:.1f} s."
        )
        if ignored:
            status += f" Ignored for {task}: {', '.join(ignored)}."
        enhancer = result.parameters.get("prompt_enhancer") or {}
        if enhancer.get("warning"):
            status += f" Prompt enhancer: {enhancer['warning']}" + (
                "" if enhancer.get("enhanced") else " (raw prompt used)."
            )
        return (
            gr.update(value=output if is_video else None, visible=is_video),
            gr.update(value=None if is_video else output, visible=not is_video),
            [output, str(result.sidecar)],
            result.parameters,
            result.prompt,
            status,
        )

    def stop(request: gr.Request) -> str:
        flag = backend.cancel_flags.get(getattr(request, "session_hash", None) or "api")
        if flag is None:
            return "Nothing is running."
        flag.set()
        return "Stopped: the generation ends after its current step."

    spec = TASKS[DEFAULT_TASK]
    with gr.Blocks(title="Bernini-R", analytics_enabled=False) as app:
        gr.Markdown("# Bernini-R video generation and editing")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt")
                with gr.Row():
                    task = gr.Dropdown(
                        list(TASK_CHOICES), value=DEFAULT_TASK, label="Task", elem_id="task", interactive=True
                    )
                    guidance = gr.Dropdown(
                        list(GUIDANCE_MODES),
                        value=spec.guidance_mode,
                        label="Guidance mode",
                        elem_id="guidance_mode",
                        interactive=True,
                    )
                hint = gr.Markdown(task_hint(DEFAULT_TASK), elem_id="task_hint")
                with gr.Tabs():
                    with gr.Tab("Video"):
                        videos = gr.File(
                            label="Video(s): ads2v takes the main clip first",
                            file_count="multiple",
                            file_types=["video"],
                            elem_id="videos",
                        )
                    with gr.Tab("Single image"):
                        image = gr.Image(label="Image", type="filepath", sources=["upload"], elem_id="image")
                    with gr.Tab("Multiple images"):
                        gallery = gr.Gallery(
                            label="Reference images", type="filepath", interactive=True, elem_id="gallery"
                        )
                enhance = gr.Checkbox(
                    label="Enable GPT prompt enhancer",
                    value=False,
                    interactive=settings.use_pe,
                    info=None if settings.use_pe else "start the demo with --use_pe to enable",
                    elem_id="enhance",
                )
                max_image_size = gr.Slider(256, 1280, value=848, step=16, label="Max image size", elem_id="max_size")
                num_frames = gr.Slider(
                    1, max_frames, value=default_frames, step=4, label="Frames", elem_id="num_frames"
                )
                steps = gr.Slider(
                    1, 50, value=40, step=1, label="Steps", info="10–50 is the usual range", elem_id="steps"
                )
                flow_shift = gr.Slider(0, 12, value=settings.flow_shift, step=0.1, label="Flow shift", elem_id="shift")
                with gr.Row():
                    seed = gr.Number(value=42, label="Seed", precision=0, minimum=0, elem_id="seed")
                    fps = gr.Slider(1, 30, value=16, step=1, label="FPS", elem_id="fps")
                with gr.Row():
                    height = gr.Slider(16, 1280, value=480, step=16, label="Height", elem_id="height")
                    width = gr.Slider(16, 1280, value=848, step=16, label="Width", elem_id="width")
                with gr.Accordion("Advanced", open=False):
                    omega_vid = gr.Slider(0, 10, value=1.25, step=0.05, label="ω vid (ω_V)", elem_id="omega_vid")
                    omega_img = gr.Slider(0, 10, value=4.5, step=0.05, label="ω img (ω_I)", elem_id="omega_img")
                    omega_txt = gr.Slider(0, 10, value=4.0, step=0.05, label="ω txt (ω_TI)", elem_id="omega_txt")
                    omega_scale = gr.Slider(0, 2, value=0.8, step=0.05, label="omega_scale", elem_id="omega_scale")
                    eta = gr.Slider(0, 2, value=0.5, step=0.05, label="eta", elem_id="eta")
                    momentum = gr.Slider(-2, 2, value=0.0, step=0.05, label="momentum", elem_id="momentum")
                    if settings.use_unipc:
                        gr.Markdown("Note: under UniPC (the default) the flow-shift slider has no effect.")
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="generate_btn")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop_btn")
            with gr.Column(scale=1):
                result_video = gr.Video(label="Result", interactive=False, elem_id="result_video")
                result_image = gr.Image(
                    label="Result (image)", interactive=False, visible=False, elem_id="result_image"
                )
                files = gr.File(label="Download (output and sidecar)", file_count="multiple", elem_id="files")
                prompt_used = gr.Textbox(label="Prompt actually used", interactive=False, elem_id="prompt_used")
                status = gr.Markdown(label="Status", elem_id="status")
                sidecar = gr.JSON(label="Sidecar", elem_id="sidecar")

        guidance_controls = [omega_vid, omega_img, omega_txt, omega_scale, eta, momentum]
        task.change(
            task_updates,
            inputs=task,
            outputs=[guidance, hint, num_frames, height, width, *guidance_controls],
            queue=False,
            api_name=False,
        )
        inputs = [
            prompt,
            task,
            guidance,
            videos,
            image,
            gallery,
            enhance,
            max_image_size,
            num_frames,
            steps,
            flow_shift,
            seed,
            fps,
            height,
            width,
            *guidance_controls,
        ]
        outputs = [result_video, result_image, files, sidecar, prompt_used, status]
        event = run.click(
            generate,
            inputs=inputs,
            outputs=outputs,
            api_name="generate",
            show_progress_on=[result_video, result_image],
        )
        stop_btn.click(stop, inputs=None, outputs=status, cancels=[event], queue=False, api_name=False)
    return app


# ----------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None, prog: str = "bernini demo") -> int:
    """Start the demo (rank 0 serves; other ranks follow the broadcast requests). Returns an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    try:
        auth = parse_auth(args.auth)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        serving = os.environ.get("RANK", "0") == "0"
        distributed = world > 1 or args.ulysses > 1 or bool(args.cfg_parallel)
        settings = DemoSettings.from_args(args, serving=serving)
        if serving:
            # Uploads and Gradio's cache go under the save dir; gradio reads this variable on import.
            cache = settings.save_dir / ".gradio"
            cache.mkdir(parents=True, exist_ok=True)
            os.environ["GRADIO_TEMP_DIR"] = str(cache)
            os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        from .cli import _quiet_libraries, load_pipeline

        _quiet_libraries()
        if distributed:
            pipe, control = load_parallel_pipeline(args)
            collective = Collective(control)
        else:
            pipe, collective = load_pipeline(args), Collective()
        try:
            return serve(args, auth, DemoBackend(pipe, settings, collective))
        finally:
            if collective.enabled:
                import torch.distributed as dist

                dist.destroy_process_group()
    except BerniniError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130


def serve(args: argparse.Namespace, auth: tuple[str, str] | None, backend: DemoBackend) -> int:
    """Rank 0 runs the Gradio server until it is stopped; the other ranks follow its broadcasts."""
    settings = backend.settings
    if backend.collective.rank != 0:
        backend.pipe.progress_bar = False
        return worker_loop(backend)
    stop_pings = backend.keep_alive()
    try:
        app = build_ui(backend)
        app.queue(default_concurrency_limit=1, max_size=args.queue_size)
        print(f"Bernini-R demo: saving to {settings.save_dir}", file=sys.stderr, flush=True)
        app.launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            auth=auth,
            max_file_size=args.max_file_size,
            allowed_paths=[str(settings.save_dir)],
            show_error=True,
            quiet=False,
        )
    finally:
        stop_pings.set()
        backend.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
