"""The command line under abuse (issue 14, items 4, 7, 9, 11): flags and help, seeds end to end, disk full,
SIGTERM, hostile JSON. Real subprocesses where exit codes and signals matter.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bernini.io.output as output_module
from bernini.frontends.cli import build_parser, main, upstream_script_main
from bernini.frontends.demo.app import build_parser as demo_parser
from bernini.frontends.help import undocumented
from bernini.frontends.parallel_check import parse_args as check_parse_args

TINY = ["--num_inference_steps", "1", "--num_frames", "5", "--height", "16", "--width", "16"]
PROMPT = "A red ball rolls across a grey floor."
REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "bernini", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def lines_of(stderr: str) -> list[str]:
    segments = (s for line in stderr.splitlines() for s in line.split("\r"))
    return [s for s in segments if s.strip() and not s.strip().startswith("denoising")]


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


# ------------------------------------------------------------------------ item 4: no abbreviations


@pytest.mark.parametrize("abbreviation", ["--out", "--num_inf", "--skip", "--allow_base"])
def test_flag_abbreviations_are_rejected(abbreviation, capsys):
    with pytest.raises(SystemExit) as info:
        main(["generate", "--prompt", PROMPT, abbreviation, "x"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "unrecognized arguments" in err and abbreviation in err


def test_every_parser_rejects_abbreviations():
    from bernini.frontends.serve.client import build_parser as submit_parser
    from bernini.frontends.serve.server import build_parser as serve_parser

    parsers = [build_parser(), *subparsers(build_parser()).values(), demo_parser(), serve_parser(), submit_parser()]
    assert all(not p.allow_abbrev for p in parsers)
    with pytest.raises(SystemExit):
        demo_parser().parse_args(["--po", "8000"])
    with pytest.raises(SystemExit):  # the self-check's own flags and the generate ones
        check_parse_args(["--layo", "1:1", "--prompt", PROMPT])
    check, _ = check_parse_args(["--layouts", "1:1", "--prompt", PROMPT])
    assert check.layouts == "1:1"


# ------------------------------------------------------------- issue 19 item 10: values no run can use


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "--gpu_memory", "0"], "argument --gpu_memory: must be a positive number, got 0"),
        (["generate", "--gpu_memory=-4"], "argument --gpu_memory: must be a positive number, got -4"),
        (["generate", "--gpu_memory", "nan"], "argument --gpu_memory: must be a positive number, got nan"),
        (["plan", "--gpu_memory", "0"], "argument --gpu_memory: must be a positive number, got 0"),
        (["generate", "--ulysses", "0"], "argument --ulysses: must be at least 1, got 0"),
        (["generate", "--ulysses=-2"], "argument --ulysses: must be at least 1, got -2"),
    ],
)
def test_a_budget_or_degree_no_run_can_use_is_refused(argv, message, tmp_path, capsys):
    """``--ulysses 0`` on one process used to run as if it were 1; ``--gpu_memory 0`` planned for an empty device."""
    with pytest.raises(SystemExit) as info:
        main([*argv, "--config", str(tmp_path / "no-bundle")])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: {message};"), err
    assert list(tmp_path.iterdir()) == []


def test_the_demo_and_the_service_refuse_them_too():
    from bernini.frontends.serve.server import build_parser as serve_parser

    for parser in (demo_parser(), serve_parser()):
        for bad in (["--ulysses", "0"], ["--gpu_memory", "0"]):
            with pytest.raises(SystemExit):
                parser.parse_args(bad)
        assert parser.parse_args(["--ulysses", "2", "--gpu_memory", "0.5"]).gpu_memory == 0.5


# ------------------------------------------------------------------------------------ item 7: help


def test_every_flag_has_help_with_its_default():
    from bernini.frontends.serve.client import build_parser as submit_parser
    from bernini.frontends.serve.server import build_parser as serve_parser

    parsers = {
        "bernini": build_parser(),
        **subparsers(build_parser()),
        "demo": demo_parser(),
        "serve": serve_parser(),
        "submit": submit_parser(),
    }
    for name, parser in parsers.items():
        assert undocumented(parser) == [], name
        for action in parser._actions:
            if action.help is argparse.SUPPRESS or not action.option_strings or action.dest in ("help", "version"):
                continue
            formatted = parser._get_formatter()._get_help_string(action)  # what --help prints for it
            assert "default" in formatted.lower(), (name, action.dest, formatted)


def test_version_and_verbose_after_the_command(tmp_path, capsys):
    from bernini import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"bernini {__version__}"
    assert build_parser().parse_args(["generate", "-v"]).verbose is True
    assert build_parser().parse_args(["-v", "generate"]).verbose is True
    assert build_parser().parse_args(["generate"]).verbose is False
    assert build_parser().parse_args(["tasks", "--verbose"]).verbose is True


def test_upstream_script_help_names_itself():
    proc = subprocess.run(
        [sys.executable, "infer_single_gpu.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.startswith("usage: infer_single_gpu.py ")
    assert (
        "--allow_base_weights" in proc.stdout and "--overwrite" in proc.stdout and "bernini generate" not in proc.stdout
    )
    proc = subprocess.run(
        [sys.executable, "infer_multi_gpu.py", "--bogus"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and proc.stderr.strip().endswith("see infer_multi_gpu.py --help")


def test_upstream_script_accepts_verbose(tmp_path, tiny_bundle, capsys):
    out = tmp_path / "o.mp4"
    args = ["--config", str(tiny_bundle), "--prompt", PROMPT, "--task_type", "t2v", *TINY, "--output", str(out), "-v"]
    assert upstream_script_main(args, prog="infer_single_gpu.py") == 0 and out.is_file()


def test_tasks_lists_inputs(capsys):
    assert main(["tasks"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "inputs: --prompt --video (1+) --image --images (needs --image or --images)" in rows["rv2v"]
    assert "inputs: --prompt --image --images (needs a source image)" in rows["i2i"]
    assert "inputs: --prompt;" in rows["t2v"] and "output: one frame (PNG)" in rows["t2i"]


def test_tiny_bundle_says_what_to_run_next(tmp_path):
    proc = cli("tiny-bundle", str(tmp_path / "b"), "--layout", "separate", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    config = Path(proc.stdout.strip())
    next_line = [line for line in lines_of(proc.stderr) if line.startswith("next:")]
    assert len(next_line) == 1 and f"--config {config}" in next_line[0] and "--low_noise_ckpt" in next_line[0]
    command = next_line[0].removeprefix("next: bernini ").replace("'", "").split()
    prompt_at = command.index("--prompt")
    command[prompt_at + 1 : command.index("--num_frames")] = [
        " ".join(command[prompt_at + 1 : command.index("--num_frames")])
    ]
    proc = cli(*command, cwd=tmp_path)  # the suggested command works as printed
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "outputs" / "tiny.mp4").is_file()


# ------------------------------------------------------------------------------- item 9: seeds


def test_seeds_end_to_end(tiny_bundle, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    seeds = [2**53, 2**53 + 1, 2**63 - 1]
    rows = [
        {"prompt": PROMPT, "task_type": "t2i", "seed": s, "output": str(tmp_path / f"s{i}.png")}
        for i, s in enumerate(seeds)
    ]
    rows.append({"prompt": PROMPT, "task_type": "t2i", "seed": -1, "output": str(tmp_path / "random.png")})
    tasks.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["generate", "--config", str(tiny_bundle), "--inputs", str(tasks), *TINY]) == 0
    records = [json.loads((tmp_path / f"s{i}.png.json").read_text()) for i in range(3)]
    assert [r["request"]["seed"] for r in records] == seeds
    assert [r["resolved"]["seed"] for r in records] == seeds
    assert (tmp_path / "s0.png").read_bytes() != (tmp_path / "s1.png").read_bytes(), "2**53 and 2**53+1 differ"
    drawn = json.loads((tmp_path / "random.png.json").read_text())["resolved"]["seed"]
    assert 0 <= drawn < 2**63
    # the recorded seed reproduces the random run
    again = tmp_path / "again.png"
    argv = ["generate", "--config", str(tiny_bundle), "--prompt", PROMPT, "--task_type", "t2i", *TINY]
    assert main([*argv, "--seed", str(drawn), "--output", str(again)]) == 0
    assert again.read_bytes() == (tmp_path / "random.png").read_bytes()


# ------------------------------------------------------------------------------ item 11: disk full


def _fail_writes_under(monkeypatch, folder: Path) -> None:
    """Simulated: every file written under ``folder`` hits ENOSPC when its bytes are saved (PIL's encoder and the
    sidecar's text both go through these two calls); other writes are left alone."""
    real_save, real_write_text = output_module.Image.Image.save, Path.write_text

    def full(path) -> bool:
        return Path(path).resolve().is_relative_to(folder.resolve())

    def save(self, fp, *args, **kwargs):
        if full(fp):
            Path(fp).write_bytes(b"\x89PNG partial")  # some bytes landed before the disk filled up
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, fp, *args, **kwargs)

    def write_text(self, *args, **kwargs):
        if full(self):
            real_write_text(self, "{ partial", encoding="utf-8")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(output_module.Image.Image, "save", save)
    monkeypatch.setattr(Path, "write_text", write_text)


def test_disk_full_on_png_and_sidecar_leaves_nothing_and_the_batch_goes_on(tiny_bundle, tmp_path, monkeypatch, capsys):
    full, fine = tmp_path / "full", tmp_path / "fine"
    full.mkdir()
    fine.mkdir()
    tasks = tmp_path / "tasks.json"
    tasks.write_text(
        json.dumps(
            [
                {"prompt": PROMPT, "task_type": "t2i", "output": str(full / "a.png")},
                {"prompt": PROMPT, "task_type": "t2i", "output": str(fine / "b.png")},
            ]
        )
    )
    _fail_writes_under(monkeypatch, full)
    rc = main(["generate", "--config", str(tiny_bundle), "--inputs", str(tasks), *TINY])
    err = capsys.readouterr().err
    assert rc == 1 and "task 1/2" in err and "No space left on device" in err and "Traceback" not in err
    assert list(full.iterdir()) == [], "no partial PNG, no temporary file"
    assert sorted(p.name for p in fine.iterdir()) == ["b.png", "b.png.json"]


def test_disk_full_in_the_sidecar_takes_the_output_with_it(tiny_bundle, tmp_path, monkeypatch, capsys):
    out = tmp_path / "o.png"
    real_write_text = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.suffix == ".json" and self.parent == tmp_path:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)  # simulated: the sidecar write hits ENOSPC
    argv = ["generate", "--config", str(tiny_bundle), "--prompt", PROMPT, "--task_type", "t2i", *TINY]
    rc = main([*argv, "--output", str(out)])
    lines = lines_of(capsys.readouterr().err)
    errors = [line for line in lines if line.startswith("error:")]
    assert rc == 1 and len(errors) == 1 and "No space left" in errors[0]
    assert list(tmp_path.iterdir()) == [], "the PNG written before the sidecar failed is removed too"


def test_disk_full_in_save_frames_leaves_no_frames_and_no_output(tiny_bundle, tmp_path, monkeypatch, capsys):
    frames = tmp_path / "frames"
    out = tmp_path / "o.mp4"
    real_save = output_module.Image.Image.save
    count = {"n": 0}

    def save(self, fp, *args, **kwargs):  # simulated: the disk fills up at the third frame
        if Path(fp).parent == frames:
            count["n"] += 1
            if count["n"] == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(output_module.Image.Image, "save", save)
    argv = ["generate", "--config", str(tiny_bundle), "--prompt", PROMPT, "--task_type", "t2v", *TINY]
    rc = main([*argv, "--output", str(out), "--save_frames", str(frames)])
    err = capsys.readouterr().err
    assert rc == 1 and "No space left" in err and count["n"] == 3
    assert list(frames.iterdir()) == [] and not out.exists() and not out.with_name("o.mp4.json").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="a real tmpfs needs Linux")
def test_real_full_tmpfs(tiny_bundle, tmp_path):
    """Not simulated: a 64 KiB tmpfs filled up before the run (needs permission to mount; skipped without)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        filler = mount / "filler"
        handle = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(handle, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(handle)
        os.truncate(filler, filler.stat().st_size - 4096)  # one free page: room for the probe file, not the outputs
        out = mount / "o.mp4"
        proc = cli(
            "generate",
            "--config",
            str(tiny_bundle),
            "--prompt",
            PROMPT,
            "--task_type",
            "t2v",
            *TINY,
            "--output",
            str(out),
            cwd=tmp_path,
        )
        lines = lines_of(proc.stderr)
        errors = [line for line in lines if line.startswith("error:")]
        assert proc.returncode != 0 and len(errors) == 1 and "Traceback" not in proc.stderr
        assert "No space left on device" in errors[0] and "free some space" in errors[0], errors
        assert sorted(p.name for p in mount.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def _file_size_limit(limit: int):
    def apply() -> None:  # in the child: writes past ``limit`` bytes fail with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_file_too_large_while_encoding_the_mp4_says_free_some_space(tiny_bundle, tmp_path):
    """Not simulated: the encoder's own write fails (EFBIG from a 2 KiB file size limit) halfway through the MP4."""
    out = tmp_path / "o.mp4"
    command = [
        sys.executable, "-m", "bernini", "generate", "--config", str(tiny_bundle), "--prompt", PROMPT,
        "--task_type", "t2v", "--num_inference_steps", "1", "--num_frames", "9", "--height", "64", "--width", "96",
        "--output", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, preexec_fn=_file_size_limit(2048)
    )
    errors = [line for line in lines_of(proc.stderr) if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "File too large" in errors[0] and "free some space" in errors[0] and ".mp4 path" not in errors[0]
    assert list(tmp_path.iterdir()) == [], "no partial MP4, temporary file or sidecar"


# --------------------------------------------------------------------------------- item 11: SIGTERM


def _signal_mid_run(tiny_bundle: Path, tmp_path: Path, *signums: int, preexec_fn=None) -> tuple[int, str]:
    """Start a long generation, send each of ``signums`` (a second apart) once it is denoising; its exit status and
    the stderr after the first signal."""
    out = tmp_path / "o.mp4"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "bernini", "generate", "--config", str(tiny_bundle), "--prompt", PROMPT,
        "--task_type", "t2v", "--num_frames", "17", "--height", "64", "--width", "96",
        "--num_inference_steps", "5000", "--no-use_unipc", "--output", str(out),
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
    seen = ""
    deadline = time.monotonic() + 180
    while "loaded" not in seen and time.monotonic() < deadline:
        seen += proc.stderr.readline()
    for signum in signums:
        time.sleep(1.0)  # well inside the 5000 steps
        assert proc.poll() is None, "still running when the signal is sent"
        proc.send_signal(signum)
    rest = proc.stderr.read()
    return proc.wait(timeout=60), rest


def test_sigterm_cleans_up_like_ctrl_c(tiny_bundle, tmp_path):
    code, rest = _signal_mid_run(tiny_bundle, tmp_path, signal.SIGTERM)
    last = rest.replace("\r", "\n").strip().splitlines()[-1]  # may follow the progress bar on its line
    assert code == 143 and last.endswith("terminated (SIGTERM); no partial output was kept"), rest
    assert "Traceback" not in rest and list(tmp_path.iterdir()) == [], "no output, sidecar or temporary file"


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_cleans_up_like_sigterm(tiny_bundle, tmp_path):
    """Closing the terminal (or losing the SSH session) mid-run: exit 128 + 1, nothing partial left."""
    code, rest = _signal_mid_run(tiny_bundle, tmp_path, signal.SIGHUP)
    last = rest.replace("\r", "\n").strip().splitlines()[-1]
    assert code == 129 and last.endswith("terminated (SIGHUP); no partial output was kept"), rest
    assert "Traceback" not in rest and list(tmp_path.iterdir()) == [], "no output, sidecar or temporary file"


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_stays_ignored_under_nohup(tiny_bundle, tmp_path):
    """``nohup`` ignores SIGHUP so that the run outlives the terminal: the hang-up changes nothing, SIGTERM still ends
    it."""

    def nohup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    code, rest = _signal_mid_run(tiny_bundle, tmp_path, signal.SIGHUP, signal.SIGTERM, preexec_fn=nohup)
    last = rest.replace("\r", "\n").strip().splitlines()[-1]
    assert code == 143 and last.endswith("terminated (SIGTERM); no partial output was kept"), rest
    assert "SIGHUP" not in rest and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- item 11: hostile JSON


def test_deeply_nested_json_is_one_line_and_a_bad_jsonl_line_keeps_its_slot(tiny_bundle, tmp_path):
    case = tmp_path / "case.json"
    case.write_text("[" * 200_000 + "]" * 200_000)
    proc = cli("generate", "--case", str(case), *TINY, cwd=tmp_path)
    lines = lines_of(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and "levels deep" in lines[0], proc.stderr
    tasks = tmp_path / "tasks.jsonl"
    good = json.dumps({"prompt": PROMPT, "task_type": "t2i", "output": str(tmp_path / "good.png")})
    tasks.write_text("[" * 200_000 + "\n" + "{not json\n" + good + "\n")
    proc = cli("generate", "--config", str(tiny_bundle), "--inputs", str(tasks), *TINY, cwd=tmp_path)
    err = proc.stderr
    assert proc.returncode == 1 and "Traceback" not in err
    assert "task 1/3: tasks.jsonl line 1: unusable JSON" in err and "task 2/3: tasks.jsonl line 2: invalid JSON" in err
    assert "1 of 3 task(s) succeeded" in err and (tmp_path / "good.png").is_file()
