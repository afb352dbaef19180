"""Shared fixtures: tiny random bundles in every published layout, written once per test session.

Also the two test tiers. A test is ``integration`` when it starts a process (a CLI subprocess, torchrun, chromium,
``bernini serve``, another interpreter) or uses PostgreSQL, and ``slow`` when it runs long in one process (marked
by hand where a run of ``--durations`` shows it); everything else is the unit tier. ``integration`` is marked
automatically: :func:`integration_reason` reads the code of the test, of the fixtures it uses and of the helpers
and classes from ``tests/`` they call. An explicit ``@pytest.mark.integration`` (or module ``pytestmark``, or a
``pytest.param(..., marks=pytest.mark.integration)`` of a parametrised fixture) is honoured as is. The bare
``python -m pytest`` runs the unit tier (``-m "not integration and not slow"``); ``-m "integration or slow"`` runs
the rest; naming files, ``-k`` or ``-m`` selects explicitly. In every tier, a test that is not marked integration
and starts a process fails at once (an audit hook), so a test the reading misses cannot hide in the unit tier.

``pins`` (``-m pins``) is what CI runs again on upstream's pinned diffusers and transformers: the unit-tier tests of
the files that exercise those libraries' APIs (:data:`PINNED_API_FILES`) and a few heavier ones that compare with
them (:data:`PINNED_API_TESTS`).
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from _pytest.mark.structures import ParameterSet

INTEGRATION = "integration"
SLOW = "slow"
PINS = "pins"
UNIT_TIER = f"not {INTEGRATION} and not {SLOW}"
OTHER_TIER = f"{INTEGRATION} or {SLOW}"
TESTS = Path(__file__).resolve().parent
# Files whose tests call diffusers or transformers where their APIs change between releases: model and bundle
# loading, layouts and conversion, attention, schedulers and sampling, GGUF, LoRA, tokenizers,
# Qwen2.5-VL (the planner), the Wan VAE's causal loops run chunk by chunk (long_video_memory: they follow
# AutoencoderKLWan's private feature cache). Their unit-tier tests are ``pins``. Not test_placement.py: diffusers
# < 0.36 group offloading needs an accelerator (test_pipeline.py skips its one such test there).
PINNED_API_FILES = frozenset(
    f"test_{name}.py"
    for name in (
        "api attention convert full_pipeline gguf guidance layers layouts loading long_video_memory lora pipeline plan "
        "planner_loading planner_memory planner_packing planner_run planner_vision rope sampler tiny_tokenizer "
        "transformer"
    ).split()
)
# Tests outside the unit tier that are ``pins`` too: they compare with diffusers' own pipeline.
PINNED_API_TESTS = frozenset({"test_pipeline.py::test_t2v_mode_reproduces_diffusers_wan_pipeline"})
# Names whose use in a test's code makes it integration: modules that start processes, and the PostgreSQL helper.
PROCESS_MODULES = frozenset({"subprocess", "multiprocessing"})
INTEGRATION_HELPERS = frozenset({"serve_support.postgres_database"})
# Audit events (docs.python.org/3/library/audit_events.html) that start a process.
PROCESS_EVENTS = frozenset(
    {"subprocess.Popen", "os.system", "os.posix_spawn", "os.exec", "os.spawn", "os.fork", "os.forkpty", "pty.spawn"}
)
_unit_test: str | None = None  # the node id of the unmarked test now in setup or call, if any
_hooked = False


def _methods(cls: type) -> list[Any]:
    members = [m.fget if isinstance(m, property) else getattr(m, "__func__", m) for m in vars(cls).values()]
    return [m for m in members if inspect.isfunction(m)]


def _in_tests(obj: Any) -> bool:
    """Whether ``obj`` (a function or class) is the tests' own code, which the reading follows."""
    if isinstance(obj, type):
        return any(_in_tests(method) for method in _methods(obj))
    code = getattr(inspect.unwrap(obj), "__code__", None)
    return code is not None and Path(code.co_filename).resolve().is_relative_to(TESTS)


def _code_objects(code: types.CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def code_reason(obj: Any, seen: set[int] | None = None) -> str | None:
    """Why ``obj`` (a function or class from ``tests/``) is integration, or None; follows the tests' own helpers."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return None
    seen.add(id(obj))
    obj = inspect.unwrap(obj)
    if isinstance(obj, type):
        return next((why for method in _methods(obj) if (why := code_reason(method, seen))), None)
    code, scope = getattr(obj, "__code__", None), getattr(obj, "__globals__", {})
    if code is None:
        return None
    for inner in _code_objects(code):
        for name in inner.co_names:
            if name in PROCESS_MODULES:
                return f"{obj.__qualname__} uses {name}"
            value = scope.get(name)
            if value is None:
                continue
            if f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}" in INTEGRATION_HELPERS:
                return f"{obj.__qualname__} uses {name}"
            if getattr(value, "__module__", None) in PROCESS_MODULES:
                return f"{obj.__qualname__} uses {value.__module__}.{name}"
            if (inspect.isfunction(value) or isinstance(value, type)) and _in_tests(value):
                if why := code_reason(value, seen):
                    return why
    return None


def _declares_tiers(fixturedef: Any) -> bool:
    """A parametrised fixture whose params carry the marker tiers its own params; its body is not read."""
    return any(
        isinstance(param, ParameterSet) and any(m.name == INTEGRATION for m in param.marks)
        for param in fixturedef.params or ()
    )


def integration_reason(item: pytest.Item) -> str | None:
    """Why ``item`` belongs to the integration tier by its code (the test, its fixtures, their helpers), or None."""
    seen: set[int] = set()
    function = getattr(item, "function", None)
    if function is not None and (why := code_reason(function, seen)):
        return why
    for name in getattr(item, "fixturenames", ()):
        for fixturedef in item._fixtureinfo.name2fixturedefs.get(name, ()):
            if not _declares_tiers(fixturedef) and _in_tests(fixturedef.func):
                if why := code_reason(fixturedef.func, seen):
                    return f"fixture {name}: {why}"
    return None


def pytest_configure(config: pytest.Config) -> None:
    selected = config.option.markexpr or config.option.keyword or config.args_source != config.ArgsSource.TESTPATHS
    if not selected:
        config.option.markexpr = UNIT_TIER
    global _hooked
    if not _hooked:  # an audit hook stays for the life of the interpreter; a nested session must not add another
        sys.addaudithook(_refuse_unmarked_processes)
        _hooked = True


def pytest_report_header(config: pytest.Config) -> str:
    if config.option.markexpr == UNIT_TIER:
        return f"tier: unit (run the other tier with: python -m pytest -q -m '{OTHER_TIER}')"
    return f"tier: as selected ({config.option.markexpr or 'all'})"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker(INTEGRATION) is None and integration_reason(item):
            item.add_marker(INTEGRATION)
        unit = item.get_closest_marker(INTEGRATION) is None and item.get_closest_marker(SLOW) is None
        name = getattr(item, "originalname", item.name)
        if (unit and item.path.name in PINNED_API_FILES) or f"{item.path.name}::{name}" in PINNED_API_TESTS:
            item.add_marker(PINS)


def _refuse_unmarked_processes(event: str, args: tuple) -> None:
    if _unit_test is not None and event in PROCESS_EVENTS:
        raise RuntimeError(
            f"{_unit_test} starts a process ({event} {str(args[:2])[:120]}) but is not marked "
            f"{INTEGRATION}: add @pytest.mark.{INTEGRATION} (tests/conftest.py explains the tiers)"
        )


@contextmanager
def _guard(item: pytest.Item) -> Iterator[None]:
    global _unit_test
    _unit_test = None if item.get_closest_marker(INTEGRATION) else item.nodeid
    try:
        yield
    finally:
        _unit_test = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    with _guard(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    with _guard(item):
        return (yield)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """Lazily written tiny bundles keyed by layout: diffusers, separate, single, wan22."""
    from bernini.tiny.bundle import write_tiny_bundle

    root = tmp_path_factory.mktemp("bundles")
    cache: dict[str, Path] = {}

    class Bundles(dict):
        def __missing__(self, layout: str) -> Path:
            path = write_tiny_bundle(root / layout, layout)
            cache[layout] = path
            self[layout] = path
            return path

    return Bundles()


@pytest.fixture(scope="session")
def tiny_bundle(bundles) -> Path:
    """The tiny Bernini-R-Diffusers bundle (pass as --config)."""
    return bundles["diffusers"]


@pytest.fixture(scope="session")
def tiny_pipe(tiny_bundle):
    """A loaded fp32 CPU pipeline on the tiny bundle, without progress bars."""
    from bernini import BerniniPipeline

    pipe = BerniniPipeline.from_pretrained(tiny_bundle, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def one_line_error() -> Callable[..., str]:
    """``one_line_error(call, *args, match=...)``: ``call`` must raise a one-line BerniniError containing ``match``."""
    from bernini.errors import BerniniError

    def check(call: Callable[..., Any], *args: Any, match: str, **kwargs: Any) -> str:
        with pytest.raises(BerniniError) as info:
            call(*args, **kwargs)
        message = str(info.value)
        assert "\n" not in message and message.strip() == message and message
        assert match.lower() in message.lower(), message
        return message

    return check


@pytest.fixture(scope="session")
def full_bundle(tmp_path_factory) -> Path:
    """The tiny full-Bernini bundle in the published layout (``bernini.tiny.full``)."""
    from bernini.tiny.full import write_tiny_full_bundle

    return write_tiny_full_bundle(tmp_path_factory.mktemp("full") / "Bernini-Diffusers")


@pytest.fixture(scope="session")
def full_media(tmp_path_factory) -> Path:
    """Media for the full model's tests: two 9-frame 48×80 videos at 16 fps (``src.mp4``, ``ads.mp4``: 45 target
    tokens, an odd packed length under Ulysses 2), a 48×48 source ``image.png`` and a reference ``ref.png``."""
    import numpy as np

    from bernini.io.output import write_image, write_video

    root = tmp_path_factory.mktemp("full_media")
    t = np.linspace(0, 1, 9)[:, None, None, None]
    y, x = np.linspace(0, 1, 48)[None, :, None, None], np.linspace(0, 1, 80)[None, None, :, None]
    channel = np.array([0.0, 1.0, 2.0])
    write_video(root / "src.mp4", (0.5 + 0.4 * np.sin(6 * x + 4 * y + 3 * t + channel)).clip(0, 1), 16)
    write_video(root / "ads.mp4", (0.5 + 0.4 * np.cos(2 * x + 7 * y - 2 * t + channel)).clip(0, 1), 16)
    ya, xa = np.linspace(0, 1, 48)[:, None, None], np.linspace(0, 1, 48)[None, :, None]
    write_image(root / "image.png", (0.5 + 0.4 * np.cos(8 * ya + 5 * xa + channel)).clip(0, 1))
    write_image(root / "ref.png", (0.5 + 0.4 * np.sin(3 * ya + 9 * xa + channel[::-1])).clip(0, 1))
    return root


@pytest.fixture
def bundle_with_config(tmp_path) -> Callable[..., Path]:
    """A copy of a bundle whose ``config.json`` is the original's with some keys replaced (every other file a
    symbolic link), for tests of what a bundle's config decides."""
    import json

    def make(source: Path, **changes) -> Path:
        bundle = tmp_path / f"{source.name}-changed"
        bundle.mkdir()
        for child in source.iterdir():
            if child.name != "config.json":
                (bundle / child.name).symlink_to(child)
        config = json.loads((source / "config.json").read_text())
        (bundle / "config.json").write_text(json.dumps({**config, **changes}))
        return bundle

    return make
