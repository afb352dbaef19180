"""Turning the demo's UI values into a request, and its errors into the one line the UI shows.

:func:`make_generate_handler` and :func:`make_stop_handler` build the two button handlers that
:mod:`bernini.frontends.demo.layout` wires up. The module avoids ``from __future__ import annotations``: Gradio
finds the ``gr.Request`` parameter by its evaluated annotation.
"""

import asyncio
import html
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import BerniniError
from ...request import GenerationRequest
from ...resolve import PLANNER_SETTINGS, resolve_request
from ...resolved import ModelDefaults, ResolvedRequest
from ...tasks import TASKS
from .backend import DemoBackend, GenerationCancelled, output_path

if TYPE_CHECKING:
    from .settings import DemoSettings

logger = logging.getLogger("bernini.frontends.demo")

TASK_CHOICES: tuple[str, ...] = ("t2i", "t2v", "i2i", "v2v", "mv2v", "r2v", "rv2v", "ads2v")


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
    *PLANNER_SETTINGS,
    "window_frames",
    "window_overlap",
)
NO_WINDOWS = 1
"""The window-frames control's value for one window over the whole clip (no ``window_frames``)."""


def _file_paths(value: Any) -> list[str]:
    """File paths from whatever Gradio hands over: a path, a list of paths, gallery (path, caption) pairs, dicts."""
    if value is None or value == "":
        return []
    if isinstance(value, (str, Path)):
        return [str(value)]
    if isinstance(value, dict):
        inner = value.get("path") or value.get("name") or value.get("video") or value.get("image")
        return _file_paths(inner)
    if isinstance(value, (tuple, list)):
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], (str, Path)):
            if value[1] is None or not Path(str(value[1])).suffix:  # (path, caption)
                return [str(value[0])]
        out: list[str] = []
        for item in value:
            out.extend(_file_paths(item))
        return out
    path = getattr(value, "path", None) or getattr(value, "name", None)
    return [str(path)] if path else []


def route_media(task: str, videos: Any, image: Any, gallery: Any) -> tuple[dict[str, Any], list[str]]:
    """Request media for ``task`` from the three inputs, and the inputs it ignored (for the status line).

    The single image is the *source* for i2i and an extra *reference*, placed before the gallery's
    images, for r2v, rv2v and ads2v.
    """
    spec = TASK_INPUTS[task]
    video_paths, image_paths, gallery_paths = _file_paths(videos), _file_paths(image), _file_paths(gallery)
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
    settings: "DemoSettings",
    prompt: str,
    task: str,
    guidance_mode: str | None,
    media: dict[str, Any],
    values: dict[str, Any],
    output: str | Path,
    defaults: ModelDefaults | None = None,
) -> ResolvedRequest:
    """The plan of UI values; image tasks force one frame, server flags fill the rest.

    With a full model's ``defaults`` every control's value is an explicit setting (the page shows the task's
    shipped settings, and what it shows is what runs); the shipped settings fill only what the page has no
    control for. Bernini-R has no planner: its page's planner values are dropped."""
    full = defaults is not None and defaults.planner_version is not None
    if task not in TASK_INPUTS:
        raise BerniniError(f"pick a task: one of {', '.join(TASK_CHOICES)}")
    if guidance_mode in ("", None):
        guidance_mode = TASKS[task].guidance_mode
    numbers = dict(values) if full else {k: v for k, v in values.items() if k not in PLANNER_SETTINGS}
    inputs = TASK_INPUTS[task]
    if full and (inputs.video or inputs.image != "none"):
        numbers.pop("height", None)  # hidden on the page: the task's shipped size (or its source's) runs
        numbers.pop("width", None)
    if TASKS[task].single_frame:
        numbers["num_frames"] = 1
    if numbers.get("window_frames") in (None, NO_WINDOWS):
        numbers.pop("window_frames", None)
        numbers.pop("window_overlap", None)
    frames = numbers.get("num_frames")
    if frames is not None and isinstance(frames, (int, float)) and frames > settings.max_frames:
        raise BerniniError(f"num_frames {frames:g} is over this server's limit of {settings.max_frames}")
    numbers = {name: value for name, value in numbers.items() if value is not None}
    server = {
        "use_unipc": settings.use_unipc,
        "use_src_tgt_id": settings.use_src_tgt_id,
        "interpolate_src_id": settings.interpolate_src_id,
        "max_trained_src_id": settings.max_trained_src_id,
    }
    explicit = None
    if full:
        page = {"prompt", "task_type", "guidance_mode", "video", "image", "images", "output", *numbers}
        explicit = frozenset(page | {name for name, value in server.items() if value is not None})
    request = GenerationRequest(
        prompt=prompt or "",
        task_type=task,
        guidance_mode=guidance_mode,
        video=media["video"],
        image=media["image"],
        images=media["images"],
        output=str(output),
        **server,
        **numbers,
        explicit=explicit,
    )
    return resolve_request(
        request, defaults
    )  # planned once, for the loaded model (None: planned again once it is known)


# The library's errors name command-line flags; the page has uploads and sliders instead.
UI_WORDS: tuple[tuple[str, str], ...] = (
    (r"drop --video or use task_type (\w+)", r"remove the video or pick the task \1"),
    (r"pass --video PATH", "upload a source video"),
    (r"takes no --image; pass reference images with --images", "takes no single image; add it under Reference images"),
    (r"takes no --images", "takes no reference images; clear Reference images"),
    (r"pass --image PATH", "upload it under Image"),
    (r"pass --images PATH \[PATH \.\.\.\]", "upload one under Image or Reference images"),
    (r" \(--prompt or the case's 'prompt'\)", ": type a prompt"),
    (r"--max_image_size", "Max image size"),
    (r"--num_frames", "Frames"),
    (r"--num_inference_steps", "Steps"),
    (r"--height", "Height"),
    (r"--width", "Width"),
    (r"--fps", "FPS"),
    (r"--seed", "Seed"),
    (r"--flow_shift", "Flow shift"),
    (r"--planning_step", "Planning steps"),
    (r"--vit_denoising_step", "ViT denoising steps"),
)
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:])(?:/[^\s/'\"]+)+/([^\s/'\"]+)")


def page_text(text: str) -> str:
    """``text`` without server paths: an absolute path becomes its file name."""
    return _ABSOLUTE_PATH.sub(r"\1", text)


def _on_this_server(value: str) -> bool:
    """An absolute path that exists here, or whose folder does (a prompt that starts with "/" is no path)."""
    if "\n" in value or not os.path.isabs(value):
        return False
    parent = os.path.dirname(value)
    return os.path.exists(value) or (parent != os.path.dirname(parent) and os.path.isdir(parent))


def page_record(value: Any) -> Any:
    """The sidecar as the page shows it: every absolute server path reduced to its file name."""
    if isinstance(value, dict):
        return {key: page_record(item) for key, item in value.items()}
    if isinstance(value, list):
        return [page_record(item) for item in value]
    if isinstance(value, str) and _on_this_server(value):
        return Path(value).name
    if isinstance(value, str):
        return page_text(value)
    return value


def user_message(message: str, uploads: dict[str, str]) -> str:
    """The error line in the page's words: uploads by the names the user gave them, no server paths, UI names
    instead of flags; safe to show as HTML."""
    for path, name in sorted(uploads.items(), key=lambda item: -len(item[0])):
        message = message.replace(path, name)
    for pattern, words in UI_WORDS:
        message = re.sub(pattern, words, message)
    return html.escape(page_text(message), quote=False)  # Gradio renders error text as HTML


def make_generate_handler(backend: DemoBackend) -> Callable[..., Any]:
    """The ``generate`` endpoint's function, bound to ``backend``.

    Gradio reads the inner function's signature (its inputs, ``gr.Request`` by annotation, ``gr.Progress``
    by default value), its return annotation and its docstring (the API description), so it keeps the
    signature it had inside ``build_ui`` and deliberately has neither a docstring nor a return annotation.
    """
    import gradio as gr

    settings = backend.settings

    async def generate(
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
        omega_tgt: float,
        planning_step: float,
        vit_denoising_step: float,
        vit_txt_cfg: float,
        vit_img_cfg: float,
        request: gr.Request,
        progress=gr.Progress(),  # noqa: B008 - Gradio's documented idiom
        window_frames: float = NO_WINDOWS,  # after the special arguments: Gradio inserts those at their places
        window_overlap: float = GenerationRequest.window_overlap,
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
            "omega_tgt": omega_tgt,
            "planning_step": planning_step,
            "vit_denoising_step": vit_denoising_step,
            "vit_txt_cfg": vit_txt_cfg,
            "vit_img_cfg": vit_img_cfg,
            "window_frames": window_frames,
            "window_overlap": window_overlap,
        }
        uploads: dict[str, str] = {}
        for item in (*_file_paths(videos), *_file_paths(image), *_file_paths(gallery)):
            uploads[item] = Path(item).name
        try:
            if enhance and not settings.use_pe:
                raise BerniniError("the prompt enhancer is off on this server; restart the demo with --use_pe")
            if task not in TASK_INPUTS:
                raise BerniniError(f"pick a task: one of {', '.join(TASK_CHOICES)}")
            media, ignored = route_media(task, videos, image, gallery)
            values = {name: ui[name] for name in NUMERIC_PARAMETERS}
            single = TASKS[task].single_frame or values["num_frames"] == 1
            session = getattr(request, "session_hash", None) or "api"
            target = output_path(backend.session_dir(session), task, 1 if single else 2)
            defaults = getattr(backend.pipe, "model_defaults", None)
            checked = build_request(settings, prompt, task, guidance_mode, media, values, target, defaults)
        except BerniniError as exc:
            raise gr.Error(user_message(str(exc), uploads), print_exception=False) from None
        payload = {
            "plan": checked,
            "use_pe": bool(enhance),
            "extra_record": {
                "demo": {
                    "ui": ui,
                    "uploads": {
                        "video": [Path(path).name for path in _file_paths(videos)],
                        "image": next((Path(path).name for path in _file_paths(image)), None),
                        "gallery": [Path(path).name for path in _file_paths(gallery)],
                    },
                    "ignored_inputs": ignored,
                    "server": settings.server,
                }
            },
        }
        cancel = threading.Event()
        backend.cancel_flags[session] = cancel
        progress(0, desc="encoding inputs")

        def on_progress(done: int, total: int) -> None:
            progress((done, total), desc="denoising", unit="steps")

        started = time.perf_counter()
        # The work runs in a thread this coroutine waits for: when Gradio cancels the event (Stop, a closed
        # page, a client's cancel) the thread is told to stop at its next step, and the queue slot stays
        # taken until it has, so a cancelled job never runs on beside the next one.
        work = asyncio.ensure_future(asyncio.to_thread(backend.submit, payload, on_progress, cancel))
        try:
            result = await asyncio.shield(work)
        except asyncio.CancelledError:
            cancel.set()
            await asyncio.wait([work])
            logger.info("generation cancelled: %s", "stopped" if work.exception() else "had already finished")
            raise
        except GenerationCancelled:
            raise gr.Error("generation stopped", print_exception=False) from None
        except BerniniError as exc:
            raise gr.Error(user_message(str(exc), uploads), print_exception=False) from None
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
            page_record(result.parameters),
            result.prompt,
            status,
        )

    return generate


def make_stop_handler(backend: DemoBackend) -> Callable[..., str]:
    """The Stop button's function: flags the caller's running generation, which ends after its current step."""
    import gradio as gr

    def stop(request: gr.Request) -> str:
        flag = backend.cancel_flags.get(getattr(request, "session_hash", None) or "api")
        if flag is None:
            return "Nothing is running."
        flag.set()
        return "Stopped: the generation ends after its current step."

    return stop
