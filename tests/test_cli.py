"""``bernini generate``: bad input fails cleanly (in this process, and a few in real subprocesses for the real exit
code and stderr), task lists, flags and sidecars."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import pytest
from PIL import Image

from bernini.frontends.cli import main
from bernini.io.output import write_image, write_video

TINY = ["--num_inference_steps", "1", "--num_frames", "5", "--height", "16", "--width", "16"]
PROMPT = "Add a red ball. The scene shows a red ball on a grey floor; everything else stays unchanged."
_PROGRESS = re.compile(r"^\s*(loading|encoding media|encoding text|denoising|decoding|writing)\b|^done in ")


def run_generate(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``bernini generate`` in a fresh interpreter, so exit codes and stderr are the real ones."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "bernini", "generate", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def stderr_lines(stderr: str) -> list[str]:
    """Non-empty stderr lines without progress-bar redraws."""
    segments = (segment for line in stderr.splitlines() for segment in line.split("\r"))
    return [s for s in segments if s.strip() and not _PROGRESS.match(s)]


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def sidecar(path: Path) -> dict:
    return json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8"))


def frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def write_clip(path: Path, frames: int = 12) -> Path:
    import numpy as np

    pixels = np.zeros((frames, 32, 48, 3), np.uint8)
    for i in range(frames):
        pixels[i, 8:24, 2 * i : 2 * i + 12] = (220, 40, 40)
    return write_video(path, pixels, 16)


def write_case(folder: Path, data: dict) -> str:
    path = folder / "case.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------- bad input, one line each


@dataclass
class BadInput:
    """Writes its inputs into a folder and returns the arguments; ``expect`` is a fragment of the message."""

    setup: Callable[[Path], list[str]]
    expect: str


def _case(data: dict) -> Callable[[Path], list[str]]:
    return lambda folder: ["--case", write_case(folder, data)]


def _bad_video(content: bytes) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        (folder / "clip.mp4").write_bytes(content)
        return ["--video", "clip.mp4", "--prompt", PROMPT]

    return setup


BAD_INPUTS: dict[str, BadInput] = {
    "unknown_case_key": BadInput(_case({"prompt": PROMPT, "task_type": "t2v", "seed": 3}), "unknown key"),
    "case_without_prompt": BadInput(_case({"task_type": "t2v"}), "prompt"),
    "case_with_blank_prompt": BadInput(_case({"task_type": "t2v", "prompt": "   "}), "prompt"),
    "no_prompt_flag": BadInput(lambda folder: ["--task_type", "t2v"], "prompt is required"),
    "case_not_found": BadInput(lambda folder: ["--case", "missing.json"], "does not exist"),
    "case_not_json": BadInput(lambda folder: ["--case", str(_write(folder / "case.json", "{oops"))], "not valid JSON"),
    "video_not_found": BadInput(lambda folder: ["--video", "nowhere.mp4", "--prompt", PROMPT], "not found"),
    "corrupt_video": BadInput(_bad_video(b"this is a text file, not a video\n" * 4), "cannot read video"),
    "empty_video": BadInput(_bad_video(b""), "empty"),
    "unknown_task_flag": BadInput(lambda folder: ["--prompt", PROMPT, "--task_type", "x2v"], "invalid choice"),
    "unknown_task_case": BadInput(_case({"prompt": PROMPT, "task_type": "x2v"}), "unknown task_type"),
    "unknown_mode_flag": BadInput(lambda folder: ["--prompt", PROMPT, "--guidance_mode", "cfg"], "invalid choice"),
    "unknown_mode_case": BadInput(_case({"prompt": PROMPT, "guidance_mode": "cfg"}), "unknown guidance_mode"),
    "mode_needs_media": BadInput(
        lambda folder: ["--prompt", PROMPT, "--task_type", "t2v", "--guidance_mode", "rv2v"], "needs a video"
    ),
    "task_needs_media": BadInput(lambda folder: ["--prompt", PROMPT, "--task_type", "rv2v"], "needs a source video"),
    "height_zero": BadInput(lambda folder: ["--prompt", PROMPT, "--height", "0"], "height"),
    "num_frames_zero": BadInput(lambda folder: ["--prompt", PROMPT, "--num_frames", "0"], "num_frames"),
    "max_image_size_8": BadInput(lambda folder: ["--prompt", PROMPT, "--max_image_size", "8"], "max_image_size"),
    "not_a_number": BadInput(lambda folder: ["--prompt", PROMPT, "--seed", "forty"], "invalid int value"),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# One of each kind runs in a fresh interpreter too: an argparse refusal, a case file's, a video's after loading.
IN_A_PROCESS = ("not_a_number", "case_not_json", "corrupt_video")


@pytest.fixture(scope="module")
def bad_runs(tiny_bundle: Path, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess[str], set[str], Path]]:
    """The IN_A_PROCESS bad inputs, each in its own folder, run concurrently (each pays the interpreter start-up)."""
    root = tmp_path_factory.mktemp("bad")
    jobs = {}
    for name in IN_A_PROCESS:
        folder = root / name
        folder.mkdir()
        args = BAD_INPUTS[name].setup(folder)
        jobs[name] = (folder, files_under(folder), args)

    def run(name: str):
        folder, before, args = jobs[name]
        common = ["--output", "out/result.mp4", "--config", str(tiny_bundle), *TINY]
        return name, (run_generate(*common, *args, cwd=folder), before, folder)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return dict(pool.map(run, jobs))


def check_one_error_line(name: str, code: int, stdout: str, stderr: str, folder: Path, before: set[str]) -> None:
    assert code != 0
    assert "Traceback" not in stderr
    lines = stderr_lines(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error:"), lines[0]
    assert BAD_INPUTS[name].expect.lower() in lines[0].lower(), lines[0]
    assert stdout == ""
    assert files_under(folder) == before  # no output, sidecar or temporary file
    assert not (folder / "outputs").exists()


@pytest.mark.parametrize("name", IN_A_PROCESS)
def test_bad_input_in_a_real_process_exits_with_one_error_line_and_writes_nothing(name: str, bad_runs) -> None:
    result, before, folder = bad_runs[name]
    check_one_error_line(name, result.returncode, result.stdout, result.stderr, folder, before)


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_exits_with_one_error_line_and_writes_nothing(
    name: str, tiny_bundle: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    args = BAD_INPUTS[name].setup(tmp_path)
    before = files_under(tmp_path)
    monkeypatch.chdir(tmp_path)
    try:
        code = main(["generate", "--output", "out/result.mp4", "--config", str(tiny_bundle), *TINY, *args])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    check_one_error_line(name, code, out, err, tmp_path, before)


# ------------------------------------------------------------------------------------- task lists


def test_task_list_keeps_going_past_a_bad_task(tiny_bundle: Path, tmp_path: Path) -> None:
    tasks = [
        {"prompt": PROMPT, "task_type": "t2v"},
        {"prompt": PROMPT, "task_type": "v2v", "video": "missing_clip.mp4"},
        {"prompt": PROMPT, "task_type": "t2i"},
    ]
    (tmp_path / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks), encoding="utf-8")
    result = run_generate(
        "--inputs", "tasks.jsonl", "--config", str(tiny_bundle), *TINY, "--output", "out/res.mp4", cwd=tmp_path
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    first, third = tmp_path / "out" / "res_000.mp4", tmp_path / "out" / "res_002.png"
    assert frame_count(first) == 5 and Image.open(third).size == (16, 16)
    assert sidecar(first)["request"]["output"] != sidecar(third)["request"]["output"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [first.name, first.name + ".json", third.name, third.name + ".json"]
    )
    lines = stderr_lines(result.stderr)
    summary = next(i for i, line in enumerate(lines) if line.startswith("summary:"))
    assert "2 of 3" in lines[summary] and "1 failed" in lines[summary]
    assert any("task 2/3" in line and "missing_clip.mp4" in line for line in lines[summary + 1 :])


def test_task_list_with_a_malformed_line_gets_numbered_default_outputs(
    tiny_bundle: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    good = json.dumps({"prompt": PROMPT, "task_type": "t2v"})
    (tmp_path / "tasks.jsonl").write_text(f"{good}\n{{not json\n{good}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    rc = main(["generate", "--inputs", "tasks.jsonl", "--config", str(tiny_bundle), *TINY])
    assert rc != 0
    err = capsys.readouterr().err
    assert "tasks.jsonl line 2" in err and "summary: 2 of 3" in err
    outputs = tmp_path / "outputs"  # no --output and no "output" keys: numbered names from the default
    assert sorted(p.name for p in outputs.glob("*.mp4")) == ["output_000.mp4", "output_002.mp4"]
    assert frame_count(outputs / "output_000.mp4") == frame_count(outputs / "output_002.mp4") == 5


def test_task_list_honours_per_task_mode_and_parameters(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    tasks = [
        {
            "prompt": PROMPT,
            "task_type": "t2v",
            "guidance_mode": "t2v",
            "seed": 7,
            "num_inference_steps": 3,
            "flow_shift": 3.0,
            "omega_txt": 6.5,
            "num_frames": 9,
            "output": str(tmp_path / "a.mp4"),
        },
        {"prompt": PROMPT, "task_type": "t2v", "output": str(tmp_path / "b.mp4")},
    ]
    tasks_file = tmp_path / "tasks.json"
    tasks_file.write_text(json.dumps(tasks), encoding="utf-8")
    rc = main(
        ["generate", "--inputs", str(tasks_file), "--config", str(tiny_bundle), *TINY, "--num_inference_steps", "2"]
    )
    assert rc == 0, capsys.readouterr().err
    a, b = sidecar(tmp_path / "a.mp4"), sidecar(tmp_path / "b.mp4")
    assert a["resolved"]["guidance_mode"] == "t2v" and b["resolved"]["guidance_mode"] == "t2v_apg"
    assert (a["request"]["seed"], b["request"]["seed"]) == (7, 42)
    assert (len(a["resolved"]["timesteps"]), len(b["resolved"]["timesteps"])) == (3, 2)
    assert (a["resolved"]["flow_shift"], b["resolved"]["flow_shift"]) == (3.0, 5.0)
    assert (a["request"]["omega_txt"], b["request"]["omega_txt"]) == (6.5, 4.0)
    assert (a["resolved"]["frames"], b["resolved"]["frames"]) == (9, 5)
    assert frame_count(tmp_path / "a.mp4") == 9


def test_skip_existing(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    tasks = [{"prompt": PROMPT, "task_type": "t2v"}, {"prompt": PROMPT, "task_type": "t2i"}]
    tasks_file = tmp_path / "tasks.jsonl"
    tasks_file.write_text("".join(json.dumps(t) + "\n" for t in tasks), encoding="utf-8")
    args = [
        "generate",
        "--inputs",
        str(tasks_file),
        "--config",
        str(tiny_bundle),
        *TINY,
        "--output",
        str(tmp_path / "o.mp4"),
    ]
    assert main(args) == 0
    video, image = tmp_path / "o_000.mp4", tmp_path / "o_001.png"
    stamps = {video: video.stat().st_mtime_ns, image: image.stat().st_mtime_ns}
    image.unlink()
    capsys.readouterr()
    assert main([*args, "--skip_existing"]) == 0
    err = capsys.readouterr().err
    assert "task 1/2" in err and "skipped" in err
    assert video.stat().st_mtime_ns == stamps[video]  # finished task left alone
    assert image.is_file() and sidecar(image)["resolved"]["frames"] == 1  # unfinished one redone
    # An output without its sidecar is not finished: it is generated again.
    (tmp_path / "o_000.mp4.json").unlink()
    assert main([*args, "--skip_existing"]) == 0
    assert video.stat().st_mtime_ns != stamps[video] and sidecar(video)["resolved"]["frames"] == 5


# ------------------------------------------------------------------------------ flags and sidecars


def test_omega_aliases_reach_the_sidecar(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "o.mp4"
    rc = main(
        [
            "generate",
            "--prompt",
            PROMPT,
            "--config",
            str(tiny_bundle),
            *TINY,
            "--omega_V",
            "1.5",
            "--omega_I",
            "2.5",
            "--omega_TI",
            "3.5",
            "--omega_scale",
            "0.7",
            "--output",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    request = sidecar(out)["request"]
    assert (request["omega_vid"], request["omega_img"], request["omega_txt"], request["omega_scale"]) == (
        1.5,
        2.5,
        3.5,
        0.7,
    )


def test_case_paths_resolve_relative_to_the_case_file(tiny_bundle: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    cases = tmp_path / "cases"
    (cases / "media").mkdir(parents=True)
    write_clip(cases / "media" / "clip.mp4")
    write_image(cases / "media" / "ref.png", Image.new("RGB", (40, 24), (30, 60, 200)))
    case = {
        "task_type": "rv2v",
        "prompt": PROMPT,
        "video": "media/clip.mp4",
        "images": ["media/ref.png"],
        "output": "outputs/rv2v.mp4",
    }
    (cases / "rv2v.json").write_text(json.dumps(case), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rc = main(["generate", "--case", "../cases/rv2v.json", "--config", str(tiny_bundle), *TINY])
    assert rc == 0, capsys.readouterr().err
    output = elsewhere / "outputs" / "rv2v.mp4"  # the case's output stays relative to the CWD, as upstream
    record = sidecar(output)
    assert Path(record["request"]["video"][0]).resolve() == (cases / "media" / "clip.mp4").resolve()
    assert Path(record["request"]["images"][0]).resolve() == (cases / "media" / "ref.png").resolve()
    assert record["resolved"]["guidance_mode"] == "rv2v"
    assert (record["resolved"]["height"], record["resolved"]["width"]) == (32, 48)
    # A file that exists relative to the CWD wins over the case folder.
    (elsewhere / "media").mkdir()
    write_clip(elsewhere / "media" / "clip.mp4", frames=20)
    rerun = ["--num_frames", "81", "--overwrite"]  # the first run's output exists: replacing it is asked for
    rc = main(["generate", "--case", "../cases/rv2v.json", "--config", str(tiny_bundle), *TINY, *rerun])
    assert rc == 0, capsys.readouterr().err
    assert sidecar(output)["request"]["video"] == ["media/clip.mp4"]
    assert sidecar(output)["resolved"]["frames"] == 17


def test_explicit_flags_override_the_case(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    case = write_case(tmp_path, {"task_type": "t2v", "guidance_mode": "t2v_apg", "prompt": "from the case"})
    out = tmp_path / "o.mp4"
    rc = main(
        ["generate", "--case", case, "--guidance_mode", "t2v", "--prompt", PROMPT]
        + ["--config", str(tiny_bundle), *TINY, "--output", str(out)]
    )
    assert rc == 0, capsys.readouterr().err
    record = sidecar(out)
    assert record["resolved"]["guidance_mode"] == "t2v" and record["request"]["prompt"] == PROMPT


def test_case_and_inputs_are_exclusive(tmp_path: Path, capsys) -> None:
    case = write_case(tmp_path, {"prompt": PROMPT})
    assert main(["generate", "--case", case, "--inputs", case]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --case cannot be combined with --inputs"]


def _unipc_timesteps(shift: float, steps: int) -> list[int]:
    """diffusers' UniPC set up like the reference (Wan2.2 scheduler, ``flow_shift=shift``, diffusers 0.35 sigmas).

    diffusers 0.35 builds the unshifted flow sigmas as ``flip(1 - linspace(1, 1/1000, N + 1))[:-1]``; later
    releases start at 1.0 instead, so the reference sigmas are passed explicitly (spec section 3.1).
    """
    import numpy as np
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=1000,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        solver_order=2,
        solver_type="bh2",
        final_sigmas_type="zero",
    )
    sigmas = np.flip(1.0 - np.linspace(1.0, 1.0 / 1000, steps + 1))[:-1].copy()
    scheduler.set_timesteps(steps, sigmas=sigmas)
    return [int(t) for t in scheduler.timesteps]


# shift -> (high-noise steps, low-noise steps, first low-noise timestep) at 40 steps (spec section 3.1)
SWITCH_TABLE = {3.0: (12, 28, 874), 5.0: (17, 23, 870)}


@pytest.mark.slow  # over ~10 s of CPU on 2 cores: the other tier (tests/conftest.py)
def test_flow_shift_reaches_the_scheduler(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    timesteps = {}
    for shift, (high, low, first_low) in SWITCH_TABLE.items():
        out = tmp_path / f"shift{shift:g}.png"  # one 16x16 frame: only the schedule matters here
        args = [
            "--prompt",
            PROMPT,
            "--config",
            str(tiny_bundle),
            *TINY,
            "--task_type",
            "t2i",
            "--num_inference_steps",
            "40",
        ]
        rc = main(["generate", *args, "--flow_shift", str(shift), "--output", str(out)])
        assert rc == 0, capsys.readouterr().err
        resolved = sidecar(out)["resolved"]
        assert resolved["flow_shift"] == shift and resolved["scheduler"] == "unipc"
        timesteps[shift] = resolved["timesteps"]
        assert timesteps[shift] == _unipc_timesteps(shift, 40)
        assert (resolved["high_noise_steps"], resolved["low_noise_steps"]) == (high, low)
        assert timesteps[shift][high] == first_low and timesteps[shift][high - 1] >= 875
    assert timesteps[3.0] != timesteps[5.0]
    assert all(a <= b for a, b in zip(timesteps[3.0], timesteps[5.0], strict=True))  # more shift, noisier steps


@pytest.mark.slow  # over ~10 s of CPU on 2 cores: the other tier (tests/conftest.py)
def test_400_unipc_steps_run_to_the_end(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    """Issue 19 item 8: the default UniPC at 400 steps (shift 5) died in diffusers (``this_order > 0``)."""
    out = tmp_path / "many.png"
    args = ["--prompt", PROMPT, "--config", str(tiny_bundle), *TINY, "--task_type", "t2i", "--guidance_mode", "none"]
    rc = main(["generate", *args, "--num_inference_steps", "400", "--output", str(out)])
    assert rc == 0, capsys.readouterr().err
    resolved = sidecar(out)["resolved"]
    assert resolved["scheduler"] == "unipc" and resolved["timesteps"] == _unipc_timesteps(5.0, 400)
    assert resolved["high_noise_steps"] + resolved["low_noise_steps"] == 400


def test_save_frames_writes_every_frame(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    out, frames_dir = tmp_path / "o.mp4", tmp_path / "frames"
    rc = main(
        ["generate", "--prompt", PROMPT, "--config", str(tiny_bundle), *TINY]
        + [
            "--num_frames",
            "9",
            "--height",
            "48",
            "--width",
            "64",
            "--output",
            str(out),
            "--save_frames",
            str(frames_dir),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    pngs = sorted(frames_dir.iterdir())
    assert [p.name for p in pngs] == [f"frame_{i:05d}.png" for i in range(9)]
    assert frame_count(out) == 9
    assert all(Image.open(p).size == (64, 48) for p in pngs)
    assert sidecar(out)["frames_dir"] == str(frames_dir)


@pytest.mark.parametrize("bad", ["broken_video", "missing_reference", "empty_reference"])
def test_bad_media_in_process(bad: str, tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    """The in-process entry point behaves like the script: one ``error:`` line, a non-zero code, no files."""
    (tmp_path / "broken.mp4").write_text("not a video", encoding="utf-8")
    (tmp_path / "empty.png").write_bytes(b"")
    write_clip(tmp_path / "clip.mp4")
    media = {
        "broken_video": ["--video", str(tmp_path / "broken.mp4")],
        "missing_reference": ["--video", str(tmp_path / "clip.mp4"), "--images", str(tmp_path / "nope.png")],
        "empty_reference": ["--video", str(tmp_path / "clip.mp4"), "--images", str(tmp_path / "empty.png")],
    }[bad]
    before = files_under(tmp_path)
    rc = main(["generate", *media, "--prompt", PROMPT, "--config", str(tiny_bundle), *TINY, "--output", "o.mp4"])
    assert rc != 0
    lines = stderr_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert Path(media[-1]).name in lines[0]
    assert files_under(tmp_path) == before


def test_tiny_bundle_into_a_file_is_a_one_line_error(tmp_path):
    target = tmp_path / "taken.png"
    target.write_bytes(b"x")
    result = subprocess.run(
        [sys.executable, "-m", "bernini", "tiny-bundle", str(target / "bundle")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: cannot write a bundle into {target / 'bundle'}: {target} is a file; choose a directory"
    ]
    assert target.read_bytes() == b"x"


@pytest.mark.parametrize(
    "call",
    [
        "main(['--help'])",
        "main(['--version'])",
        "main(['generate', '--help'])",
        "main(['plan', '--help'])",
        "upstream_script_main(['--help'])",
    ],
)
def test_help_and_version_do_not_import_torch(call):
    """``bernini --help`` stays quick: parsing and printing help must not bring torch (or diffusers) in."""
    code = (
        "import sys\nfrom bernini.frontends.cli import main, upstream_script_main\n"
        f"try:\n    {call}\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'numpy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout or "bernini " in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"
