"""Each request setting is declared once (on GenerationRequest); the flags and the job body are generated from it."""

import copy
import types
from dataclasses import replace

import pytest
from pydantic import ValidationError

from bernini.frontends.demo.layout import GUIDANCE_DEFAULTS, SLIDERS
from bernini.frontends.options import OneLineErrorParser, add_generation_args
from bernini.frontends.serve.schemas import JobCreate, _job_fields
from bernini.request import GenerationRequest
from bernini.settings import Slider


def _redeclare(monkeypatch, name: str, default, **spec) -> None:
    field = copy.copy(GenerationRequest.__dataclass_fields__[name])
    field.metadata = types.MappingProxyType({"setting": replace(field.metadata["setting"], default=default, **spec)})
    monkeypatch.setitem(GenerationRequest.__dataclass_fields__, name, field)


def test_a_setting_declared_once_reaches_the_flags_and_the_service_body(monkeypatch):
    _redeclare(monkeypatch, "width", 832, help="declared width", flags=("--width", "--w"), service="Declared.")
    _redeclare(monkeypatch, "height", 480, bounds={"le": 600}, slider=Slider(8, 64, 8, "H"))
    parser = OneLineErrorParser(prog="t")
    add_generation_args(parser)
    width = next(action for action in parser._actions if action.dest == "width")
    assert width.default is None and width.option_strings == ["--width", "--w"]  # None: not given
    assert width.help == "declared width (default: 832)"  # the declared built-in default
    assert parser.parse_args(["--w", "64", "--prompt", "x"]).width == 64

    fields = _job_fields()
    assert fields["width"][1].default == 832 and fields["width"][1].description == "Declared."
    assert "output" not in fields and "cache_calibration" not in fields  # declared without a service field
    from pydantic import create_model

    body = create_model("Body", **{"height": fields["height"]})
    assert body(height=600).height == 600
    with pytest.raises(ValidationError):
        body(height=601)


def test_the_front_ends_defaults_are_the_requests():
    """The job body documents and the demo's controls start from the declared built-in defaults (no copy drifts);
    a flag not given is None on the command line, like a field left unset on the request."""
    blank = GenerationRequest.builtin()
    parser = OneLineErrorParser(prog="t")
    add_generation_args(parser)
    args = vars(parser.parse_args([]))
    body = JobCreate.model_validate({"prompt": "x"}).model_dump()
    for f in GenerationRequest.settings():
        value = blank[f.name]
        if f.name in args:
            assert args[f.name] is None, f.name
        if f.name in body and f.name != "prompt":
            assert body[f.name] == value, f.name
    assert GUIDANCE_DEFAULTS == {k: blank[k] for k in GUIDANCE_DEFAULTS}
    assert SLIDERS["width"].low <= blank["width"] <= SLIDERS["width"].high


# ------------------------------------------------------------------ None = not given, one merge, one record


def test_a_field_left_unset_is_none_and_reported_as_not_given():
    """A value equal to the built-in default is still given when the user set it; one left out is None."""
    from bernini.frontends.options import requests_from_args

    request = GenerationRequest(prompt="a fox", seed=42, num_frames=81)
    assert request.num_inference_steps is None and request.omega_txt is None and request.video is None
    assert request.given() == {"prompt", "seed", "num_frames"}
    parser = OneLineErrorParser(prog="t")
    add_generation_args(parser)
    (flags,) = requests_from_args(parser.parse_args(["--prompt", "a fox", "--omega_TI", "4.0", "--seed", "42"]))
    assert flags.given() == {"prompt", "omega_txt", "seed", "output"}  # output: the default file, named for the run
    assert flags.num_inference_steps is None and flags.omega_txt == 4.0


LAYERS = ("BUILTIN", "PRESET", "CASE", "USER")


@pytest.mark.parametrize(
    ("lower", "higher"), [(a, b) for i, a in enumerate(LAYERS) for b in LAYERS[i + 1 :]], ids=lambda name: name
)
def test_each_layer_wins_over_the_ones_below_it(lower, higher):
    from bernini.settings import Layer, merge_layers

    values = {"BUILTIN": 1, "PRESET": 2, "CASE": 3, "USER": 4}
    builtin = {"x": values["BUILTIN"] if lower == "BUILTIN" else 0, "y": 0}
    layers = {Layer[name]: {"x": values[name]} for name in (lower, higher) if name != "BUILTIN"}
    merged = merge_layers(builtin, layers)
    assert merged["x"] == values[higher] and merged.layer("x") is Layer[higher]
    assert merged.replaced("x", Layer[lower]) == values[lower]
    assert merged.given("x") is (higher == "USER")
    assert merged["y"] == 0 and merged.layer("y") is Layer.BUILTIN  # nothing set it
    merged = merge_layers(
        builtin, {Layer[higher]: {"x": None}, **{k: v for k, v in layers.items() if k != Layer[higher]}}
    )
    assert merged["x"] == values[lower]  # None: that layer does not set it


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("BUILTIN", "PRESET"),
        ("BUILTIN", "CASE"),
        ("BUILTIN", "USER"),
        ("PRESET", "CASE"),
        ("PRESET", "USER"),
        ("CASE", "USER"),
    ],
)
def test_resolution_keeps_the_layer_order(lower, higher):
    """Each pair of layers through resolve_request: the setting both set takes the higher layer's value."""
    from bernini.resolve import resolve_request
    from bernini.resolved import ModelDefaults

    full = ModelDefaults(planner_version="v2")  # shipped t2v: vae_txt_vit_wapg, 50 steps, omega_txt 5.0
    cases = {
        ("BUILTIN", "PRESET"): (GenerationRequest(prompt="x", preset="lightning4"), None, "num_inference_steps", 4),
        ("BUILTIN", "CASE"): (
            GenerationRequest(prompt="x", case={"guidance_mode": "t2v"}),
            None,
            "guidance_mode",
            "t2v",
        ),
        ("BUILTIN", "USER"): (GenerationRequest(prompt="x", omega_txt=3.0), None, "omega_txt", 3.0),
        ("PRESET", "CASE"): (
            GenerationRequest(prompt="x", case={"guidance_mode": "vae_txt_vit"}),
            full,
            "guidance_mode",
            "vae_txt_vit",
        ),
        ("PRESET", "USER"): (GenerationRequest(prompt="x", omega_txt=4.0), full, "omega_txt", 4.0),
        ("CASE", "USER"): (
            GenerationRequest(prompt="x", guidance_mode="t2v", case={"guidance_mode": "none"}),
            None,
            "guidance_mode",
            "t2v",
        ),
    }
    request, defaults, name, expected = cases[(lower, higher)]
    record = resolve_request(request, defaults).request_record()
    assert record[name] == expected
    without = replace(request, case={}) if higher == "CASE" else replace(request, **{name: None})
    if higher == "PRESET":
        without = replace(request, preset=None)
        defaults = None
    assert resolve_request(without, defaults).request_record()[name] != expected  # the lower layer's value lost


def test_the_sidecar_request_is_generated_from_every_settings_declaration():
    """Every setting names where its resolved value lives; each value given distinct lands in its own field."""
    from bernini.resolve import resolve_request
    from bernini.resolved import SourceIdPolicy
    from bernini.settings import spec_of

    given = dict(
        prompt="a fox",
        task_type="t2v",
        guidance_mode="t2v",
        output="o.mp4",
        seed=7,
        num_frames=9,
        num_inference_steps=3,
        flow_shift=3.5,
        omega_vid=1.1,
        omega_img=2.2,
        omega_txt=3.3,
        omega_scale=0.44,
        omega_tgt=0.55,
        planning_step=6,
        vit_txt_cfg=1.7,
        vit_img_cfg=0.9,
        vit_denoising_step=2,
        eta=0.3,
        norm_threshold=[10.0, 20.0],
        momentum=0.12,
        fps=8.0,
        video_fps=12.0,
        max_image_size=256,
        height=64,
        width=96,
        neg_prompt="blur",
        system_prompt="sys",
        use_unipc=False,
        use_src_tgt_id=False,
        interpolate_src_id=False,
        max_trained_src_id=3,
        use_pe=True,
        pe_model="pe",
        preset=None,
        cache="teacache",
        cache_threshold=0.25,
        cache_calibration=None,
        batch_branches=True,
        window_frames=5,
        window_overlap=0,
        video=[],
        image=None,
        images=[],
        extend=None,
    )
    assert set(given) == set(GenerationRequest.field_names())
    resolved = resolve_request(GenerationRequest(**given))
    resolved = replace(resolved, source_ids=resolved.source_id_choice.resolve(SourceIdPolicy()))  # the model's fill
    record = resolved.request_record()
    assert list(record) == list(GenerationRequest.field_names())
    assert record == given
    for f in GenerationRequest.settings():
        path = spec_of(f).resolved or f.name
        value = resolved
        for part in path.split("."):
            value = getattr(value, part) if value is not None else None  # each declared place exists
    again = resolve_request(GenerationRequest(**record))  # the sidecar's request reproduces the run
    assert replace(again, source_ids=resolved.source_ids) == resolved


@pytest.mark.parametrize(
    "request_and_defaults",
    ["bernini-r", "preset", "full", "unknown model"],
)
def test_a_resolved_request_reads_back_from_its_json(request_and_defaults, tmp_path):
    import json

    from bernini.resolve import resolve_request
    from bernini.resolved import ModelDefaults, ResolvedRequest

    image = tmp_path / "ref.png"
    image.write_bytes(b"png")
    requests = {
        "bernini-r": (
            GenerationRequest(prompt="a fox", seed=-1, cache="teacache", images=[str(image)]),
            ModelDefaults(),
        ),
        "preset": (GenerationRequest(prompt="a fox", preset="lightning4", num_inference_steps=6), ModelDefaults()),
        "full": (GenerationRequest(prompt="a fox", case={"guidance_mode": "t2v"}), ModelDefaults(planner_version="v1")),
        "unknown model": (GenerationRequest(prompt="a fox", num_frames=10), None),
    }
    request, defaults = requests[request_and_defaults]
    resolved = resolve_request(request, defaults)
    back = ResolvedRequest.from_json(json.loads(json.dumps(resolved.to_json())))
    assert back == resolved and back.adjustments == resolved.adjustments
    assert back.request is not None and back.request.values() == resolved.request.values()
    assert back.request.case == resolved.request.case


def test_a_job_is_resolved_once_at_submit_and_the_worker_runs_the_stored_request(tiny_pipe, tmp_path, monkeypatch):
    """The service stores the resolved request (JSON) with the job; the worker runs it without resolving again."""
    import json

    from bernini import pipeline, resolve, runner
    from bernini.frontends.serve import worker as worker_module
    from bernini.frontends.serve.service import Service, ServiceConfig
    from bernini.frontends.serve.store import Store
    from bernini.frontends.serve.worker import Worker, WorkerSettings

    calls: list[str] = []
    original = resolve.resolve_request

    def counted(request, defaults=None):
        calls.append(request.prompt)
        return original(request, defaults)

    for module in (resolve, runner, pipeline, worker_module):
        monkeypatch.setattr(module, "resolve_request", counted)
    store = Store(f"sqlite:///{tmp_path / 'queue.db'}")
    config = ServiceConfig("tiny", tmp_path, "w", defaults=tiny_pipe.model_defaults)
    body = {"prompt": "a fox", "seed": -1, "num_frames": 5, "height": 32, "width": 48, "num_inference_steps": 2}
    job, _ = Service(store, config).submit(JobCreate.model_validate(body), None)
    assert calls == ["a fox"]
    stored = json.loads(store.get_job(job.id).resolved)
    assert 0 <= stored["seed"] < 2**63 and stored["num_inference_steps"] == 2  # the seed drawn once, at submit
    assert json.loads(store.get_job(job.id).params) == body  # what the client gave, nothing filled in
    Worker(store, tiny_pipe, WorkerSettings(tmp_path, "w"), defaults=tiny_pipe.model_defaults).run(store.claim("w"))
    done = store.get_job(job.id)
    assert done.state == "succeeded", done.error
    assert calls == ["a fox"]  # not resolved again by the worker or the pipeline
    sidecar = json.loads(open(done.sidecar_path, encoding="utf-8").read())
    assert sidecar["request"]["seed"] == stored["seed"]
