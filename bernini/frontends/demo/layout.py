"""The demo's Gradio Blocks: its components, what a task change updates, and which handler each event calls."""

import functools
from typing import TYPE_CHECKING, Any

from ...request import GenerationRequest
from ...sampling.full_presets import FULL_PRESETS
from ...sampling.guidance import FULL_MODEL_MODES, GUIDANCE_MODES
from ...settings import Slider, spec_of
from ...tasks import TASKS
from .backend import DemoBackend
from .handlers import NO_WINDOWS, TASK_CHOICES, TASK_INPUTS, make_generate_handler, make_stop_handler

if TYPE_CHECKING:
    import gradio as gr

DEFAULT_TASK = "t2v"
BLANK = GenerationRequest()  # the built-in defaults the controls start from
DEFAULT_FRAMES = BLANK.num_frames
SLIDERS: dict[str, Slider] = {f.name: spec_of(f).slider for f in GenerationRequest.settings() if spec_of(f).slider}
"""Each setting's control (range, step, label), from its declaration on :class:`GenerationRequest`."""
# Guidance defaults a task change puts back (the frame count depends on the task too).
GUIDANCE_DEFAULTS: dict[str, float] = {
    name: getattr(BLANK, name) for name in ("omega_vid", "omega_img", "omega_txt", "omega_scale", "eta", "momentum")
}


def task_hint(task: str) -> str:
    """The input hint shown under the task dropdown."""
    return f"**{task}**: {TASKS[task].description}. Inputs: {TASK_INPUTS[task].hint}."


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
        *(gr.update(value=default) for default in GUIDANCE_DEFAULTS.values()),
    )


def full_task_values(task: str, version: str) -> dict[str, Any]:
    """The controls a task change sets on a full model: the task's shipped settings (``FULL_PRESETS``), with the
    planner guidance of upstream's scripts (``--vit_txt_cfg 1.2 --vit_img_cfg 1.0``, the request defaults)."""
    blank = GenerationRequest()
    values = {
        "vit_txt_cfg": blank.vit_txt_cfg,
        "vit_img_cfg": blank.vit_img_cfg,
        **FULL_PRESETS[version][task].values(),
    }
    values.pop("neg_prompt", None)  # no control: the shipped negative prompt fills it at planning
    return values


PLANNER_SLIDERS: dict[str, tuple[float, float, float, str]] = {
    name: (SLIDERS[name].low, SLIDERS[name].high, SLIDERS[name].step, SLIDERS[name].label)
    for name in ("omega_tgt", "planning_step", "vit_denoising_step", "vit_txt_cfg", "vit_img_cfg")
}
"""The planner's controls, in the generate endpoint's order: (minimum, maximum, step, label)."""

FULL_CONTROLS = (
    "num_inference_steps",
    "omega_vid",
    "omega_img",
    "omega_txt",
    "omega_scale",
    "omega_tgt",
    "planning_step",
    "vit_denoising_step",
    "vit_txt_cfg",
    "vit_img_cfg",
)


def full_task_updates(task: str, version: str) -> tuple[Any, ...]:
    """Outputs of a task change on a full model: guidance mode, hint, frames, height, width, then
    :data:`FULL_CONTROLS`, all from the task's shipped settings (the source sets the size where they have none)."""
    import gradio as gr

    if task not in TASKS:
        task = DEFAULT_TASK
    values = full_task_values(task, version)
    text_only = not TASK_INPUTS[task].video and TASK_INPUTS[task].image == "none"
    size = [gr.update(visible=text_only, **({"value": values[k]} if k in values else {})) for k in ("height", "width")]
    return (
        gr.update(value=values["guidance_mode"]),
        gr.update(value=task_hint(task)),
        gr.update(value=values["num_frames"], interactive=not TASKS[task].single_frame),
        *size,
        *(gr.update(value=values[name]) for name in FULL_CONTROLS),
    )


def build_ui(backend: DemoBackend) -> "gr.Blocks":
    """The Blocks app; the generation endpoint is named ``generate`` for API clients."""
    import gradio as gr

    settings = backend.settings
    max_frames = min(int(SLIDERS["num_frames"].high), settings.max_frames)
    default_frames = min(DEFAULT_FRAMES, max_frames)
    generate = make_generate_handler(backend)
    stop = make_stop_handler(backend)

    spec = TASKS[DEFAULT_TASK]
    version = getattr(getattr(backend.pipe, "source", None), "planner_version", None)
    full = version is not None
    modes = FULL_MODEL_MODES if full else GUIDANCE_MODES
    start = full_task_values(DEFAULT_TASK, version) if full else {}
    blank = BLANK

    def initial(name: str, fallback: Any) -> Any:
        return start.get(name, fallback)

    def slider(name: str, value: Any, elem_id: str | None = None, **kwargs: Any) -> "gr.Slider":
        """The setting's declared control."""
        s = SLIDERS[name]
        return gr.Slider(s.low, s.high, value=value, step=s.step, label=s.label, elem_id=elem_id or name, **kwargs)

    title = f"Bernini ({version})" if full else "Bernini-R"
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"# {title} video generation and editing")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt")
                with gr.Row():
                    task = gr.Dropdown(
                        list(TASK_CHOICES), value=DEFAULT_TASK, label="Task", elem_id="task", interactive=True
                    )
                    guidance = gr.Dropdown(
                        list(modes),
                        value=initial("guidance_mode", spec.guidance_mode),
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
                max_image_size = slider("max_image_size", blank.max_image_size, "max_size")
                num_frames = gr.Slider(
                    SLIDERS["num_frames"].low,
                    max_frames,
                    value=min(initial("num_frames", default_frames), max_frames),
                    step=SLIDERS["num_frames"].step,
                    label=SLIDERS["num_frames"].label,
                    elem_id="num_frames",
                )
                steps = slider(
                    "num_inference_steps",
                    initial("num_inference_steps", blank.num_inference_steps),
                    "steps",
                    info="10–50 is the usual range",
                )
                flow_shift = slider("flow_shift", settings.flow_shift, "shift")
                with gr.Row():
                    seed = gr.Number(value=blank.seed, label="Seed", precision=0, minimum=0, elem_id="seed")
                    fps = slider("fps", blank.fps)
                with gr.Row():
                    height = slider("height", initial("height", blank.height))
                    width = slider("width", initial("width", blank.width))
                with gr.Accordion("Advanced", open=False):
                    omega_vid = slider("omega_vid", initial("omega_vid", blank.omega_vid))
                    omega_img = slider("omega_img", initial("omega_img", blank.omega_img))
                    omega_txt = slider("omega_txt", initial("omega_txt", blank.omega_txt))
                    omega_scale = slider("omega_scale", initial("omega_scale", blank.omega_scale))
                    # APG's eta and momentum: the full model's modes do not read them
                    eta = slider("eta", blank.eta, visible=not full)
                    momentum = slider("momentum", blank.momentum, visible=not full)
                with gr.Accordion("Planner (full Bernini)", open=True, visible=full):
                    planner = {
                        name: slider(name, initial(name, getattr(blank, name)), visible=full)
                        for name in PLANNER_SLIDERS
                    }
                    if settings.use_unipc:
                        gr.Markdown("Note: under UniPC (the default) the flow-shift slider has no effect.")
                with gr.Accordion("Long video (context windows)", open=False):
                    window_frames = slider("window_frames", NO_WINDOWS)
                    window_overlap = slider("window_overlap", blank.window_overlap)
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
        planner_controls = list(planner.values())
        if full:
            controls = {
                "num_inference_steps": steps,
                "omega_vid": omega_vid,
                "omega_img": omega_img,
                "omega_txt": omega_txt,
                "omega_scale": omega_scale,
                **planner,
            }
            task.change(
                functools.partial(full_task_updates, version=version),
                inputs=task,
                outputs=[guidance, hint, num_frames, height, width, *(controls[name] for name in FULL_CONTROLS)],
                queue=False,
                api_name=False,
            )
        else:
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
            *planner_controls,
            window_frames,
            window_overlap,
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
