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
