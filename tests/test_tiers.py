"""The two test tiers (tests/conftest.py): what the bare command, ``-m integration`` and named paths collect, how a
test is read as integration, and the guard that fails an unmarked test which starts a process."""

from __future__ import annotations

import os
from pathlib import Path

import conftest
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Mixed files: a PostgreSQL param of a fixture, a subprocess check next to in-process tests, torchrun launches,
# slow in-process runs.
FILES = ("tests/test_serve_store.py", "tests/test_layers.py", "tests/test_parallel.py", "tests/test_layouts.py")


class Collected:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.marked: set[str] = set()

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.ids = [item.nodeid for item in session.items]
        self.marked = {
            item.nodeid
            for item in session.items
            if item.get_closest_marker(conftest.INTEGRATION) or item.get_closest_marker(conftest.SLOW)
        }


def collect(monkeypatch, *args: str) -> Collected:
    """Node ids ``python -m pytest ARGS`` would run from the repository root, with ``testpaths`` cut to FILES."""
    monkeypatch.chdir(ROOT)
    collected, running = Collected(), conftest._unit_test
    conftest._unit_test = None  # the inner session's plugins may start processes (git)
    try:
        code = pytest.main(
            ["--collect-only", "-q", "-p", "no:cacheprovider", "-o", f"testpaths={' '.join(FILES)}", *args],
            plugins=[collected],
        )
    finally:
        conftest._unit_test = running
    assert code in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED), code
    return collected


def test_the_bare_command_is_the_unit_tier_and_both_tiers_run_every_test_once(monkeypatch):
    unit, other = collect(monkeypatch).ids, collect(monkeypatch, "-m", conftest.OTHER_TIER).ids
    everything = collect(monkeypatch, *FILES)
    every = everything.ids
    assert len(set(every)) == len(every) and every
    assert sorted(unit + other) == sorted(every), "the bare command and the other tier together run every test"
    assert set(other) == everything.marked
    store = "tests/test_serve_store.py::test_claims_follow_submission_order"
    assert f"{store}[sqlite]" in unit and f"{store}[postgres]" in other
    imports = [i for i in every if "::test_light_modules_import_without_heavy_libraries[" in i]
    assert imports and set(imports) <= set(other)
    assert "tests/test_layers.py::test_the_package_has_no_import_cycle" in unit
    launches = [i for i in every if i.startswith("tests/test_parallel.py::test_ulysses_and_cfg_parallel_match")]
    assert launches and set(launches) <= set(other)
    assert "tests/test_parallel.py::test_layout_puts_ulysses_innermost_then_cfg_then_dp" in unit
    slow = "tests/test_layouts.py::test_fp16_files_generate_the_same_frames_as_the_bundle_rounded_to_fp16"
    assert slow in other and "tests/test_layouts.py::test_fp8_files_are_within_fp8_rounding_of_the_bundle" in unit
    assert collect(monkeypatch, "-k", "light_modules").ids == [i for i in every if "light_modules" in i]


SAMPLES = """
import subprocess
from subprocess import run
from serve_support import postgres_database

def direct(): subprocess.run(["true"])
def imported_name(): run(["true"])
def local_import():
    import multiprocessing
    return multiprocessing
def helper(): return direct()
def through_a_helper(): return [helper() for _ in range(1)]
class Launcher:
    def start(self): return subprocess.Popen(["true"])
def through_a_class(): return Launcher
def postgres():
    with postgres_database() as url: return url
def in_process(): return len("subprocess")
"""


def test_a_process_or_postgres_anywhere_in_a_tests_code_makes_it_integration():
    scope: dict = {"__name__": "tiers_samples"}
    exec(compile(SAMPLES, str(conftest.TESTS / "tiers_samples.py"), "exec"), scope)  # a file under tests/
    reasons = {
        name: conftest.code_reason(scope[name])
        for name in (
            "direct",
            "imported_name",
            "local_import",
            "through_a_helper",
            "through_a_class",
            "postgres",
            "in_process",
        )
    }
    assert reasons == {
        "direct": "direct uses subprocess",
        "imported_name": "imported_name uses subprocess.run",
        "local_import": "local_import uses multiprocessing",
        "through_a_helper": "direct uses subprocess",
        "through_a_class": "Launcher.start uses subprocess",
        "postgres": "postgres uses postgres_database",
        "in_process": None,
    }


def test_an_unmarked_test_that_starts_a_process_fails_before_the_process_starts(tmp_path):
    marker = tmp_path / "ran"
    # os.posix_spawn is not a name the reading looks for: only the audit hook can stop it.
    refusal = r"test_tiers.py::test_an_unmarked.* starts a process .*not marked integration"
    with pytest.raises(RuntimeError, match=refusal):
        os.posix_spawn("/bin/sh", ["sh", "-c", f"touch {marker}"], {})
    assert not marker.exists()


def test_pins_are_the_unit_tests_of_the_pinned_api_files_and_the_named_comparisons(monkeypatch):
    """``-m pins`` (CI's run on upstream's pinned diffusers and transformers) takes no process-starting or slow test
    of those files, and nothing of the others, but does take the named comparison with diffusers' pipeline."""
    parity = "tests/test_pipeline.py::test_t2v_mode_reproduces_diffusers_wan_pipeline"
    pins = collect(monkeypatch, "-m", conftest.PINS, *FILES, "tests/test_pipeline.py")
    assert {i.split("::")[0] for i in pins.ids} == {
        "tests/test_layers.py",
        "tests/test_layouts.py",
        "tests/test_pipeline.py",
    }
    assert pins.marked == {parity}, "of the tests outside the unit tier, only the named ones"
    assert "tests/test_layers.py::test_the_package_has_no_import_cycle" in pins.ids
    assert "tests/test_layouts.py::test_fp8_files_are_within_fp8_rounding_of_the_bundle" in pins.ids
