"""The Gradio demo: flags, request routing, the rank loop, the ``generate`` API and a real headless Chromium.

One demo server (``python gradio_demo.py`` on the tiny bundle, loopback, a free port) serves the whole
module. The browser is Debian's ``chromium`` driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``), so no extra Python package or browser download is needed; the browser
test is skipped only when ``/usr/bin/chromium`` is absent (``apt-get install -y chromium``).
"""

import base64
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from bernini.resolve import with_model_defaults

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

from bernini.errors import BerniniError  # noqa: E402
from bernini.frontends.demo import (  # noqa: E402 - after the importorskip guards
    TASK_CHOICES,
    DemoBackend,
    DemoSettings,
    build_parser,
    parse_auth,
    route_media,
    task_updates,
    worker_loop,
)
from bernini.frontends.demo.handlers import page_record, user_message  # noqa: E402
from bernini.io.output import write_video  # noqa: E402
from bernini.tasks import TASKS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("BERNINI_CHROMIUM", "/usr/bin/chromium")
TINY = dict(max_image_size=256, num_frames=5, num_inference_steps=2, fps=8, height=64, width=96)
BAD_MESSAGE = "cannot read video bad.mp4: not a video ffmpeg can decode"


# ------------------------------------------------------------------------------- without a server
def test_flags_have_upstream_names_and_safe_defaults():
    args = build_parser().parse_args([])
    assert (args.host, args.port, args.share, args.auth) == ("127.0.0.1", 7860, False, None)
    # use_unipc None: the bundle's config decides (upstream's bundles say true); use_pe None: not given (off)
    assert (args.flow_shift, args.use_unipc, args.use_pe, args.queue_size, args.max_frames) == (
        5.0,
        None,
        None,
        20,
        360,
    )
    args = build_parser().parse_args(
        ["--config", "b", "--no-use_unipc", "--use_pe", "--pe_model", "m", "--save_dir", "s", "--flow_shift", "3"]
        + ["--high_noise_ckpt", "h", "--low_noise_ckpt", "l", "--max_trained_src_id", "7", "--share", "--port", "9"]
    )
    assert (args.config, args.use_unipc, args.use_pe, args.pe_model, args.flow_shift) == ("b", False, True, "m", 3.0)
    assert (args.high_noise_ckpt, args.low_noise_ckpt, args.max_trained_src_id, args.port) == ("h", "l", 7, 9)
    assert parse_auth("ann:se:cret") == ("ann", "se:cret")
    for bad in ("ann", ":pw", "ann:"):
        with pytest.raises(BerniniError, match="USER:PASSWORD"):
            parse_auth(bad)


def test_media_routing_by_task():
    media, ignored = route_media("i2i", ["v.mp4"], "src.png", [("g1.png", None), ("g2.png", "caption")])
    assert media == {"video": [], "image": "src.png", "images": ["g1.png", "g2.png"]} and ignored == ["video"]
    media, ignored = route_media("r2v", None, "ref.png", [("g1.png", None)])
    assert media == {"video": [], "image": None, "images": ["ref.png", "g1.png"]} and ignored == []
    media, _ = route_media("ads2v", ["main.mp4", "insert.mp4"], "product.png", [])
    assert media == {"video": ["main.mp4", "insert.mp4"], "image": None, "images": ["product.png"]}
    media, ignored = route_media("t2v", ["v.mp4"], "x.png", [("g.png", None)])
    assert media == {"video": [], "image": None, "images": []}
    assert ignored == ["video", "single image", "gallery"]


def test_task_change_fills_guidance_mode_and_resets_defaults():
    for task in TASK_CHOICES:
        guidance, hint, frames, height, _width, *guidance_values = task_updates(task)
        assert guidance["value"] == TASKS[task].guidance_mode
        assert task in hint["value"]
        assert frames["value"] == (1 if TASKS[task].single_frame else 81)
        assert height["visible"] == (task in ("t2i", "t2v"))
        assert [u["value"] for u in guidance_values] == [1.25, 4.5, 4.0, 0.8, 0.5, 0.0]


class _ScriptedChannel:
    """Stands in for the gloo group on a non-zero rank: hands out queued messages."""

    enabled = False
    rank = 1

    def __init__(self, messages: list[Any]) -> None:
        self.messages = list(messages)

    def broadcast(self, obj: Any = None) -> Any:
        return self.messages.pop(0)


def test_worker_ranks_run_every_broadcast_request_until_shutdown(tmp_path, monkeypatch):
    calls: list[dict] = []
    messages = [{"kind": "generate", "plan": "a"}, {"kind": "generate", "plan": "b"}]
    backend = DemoBackend(None, DemoSettings(save_dir=tmp_path), _ScriptedChannel([*messages, {"kind": "shutdown"}]))

    def execute(payload, cancel=None, job_id=None):
        calls.append(payload)
        if payload["plan"] == "a":
            raise BerniniError("a bad request must not stop the loop")

    monkeypatch.setattr(backend, "execute", execute)
    assert worker_loop(backend) == 0
    assert [c["plan"] for c in calls] == ["a", "b"]


@pytest.mark.slow  # over ~10 s of CPU on 2 cores: the other tier (tests/conftest.py)
def test_backend_feeds_progress_per_step_stops_on_cancel_and_enhances(tiny_pipe, tmp_path, monkeypatch):
    import threading

    from bernini.frontends.demo import GenerationCancelled, build_request, output_path

    settings = DemoSettings(save_dir=tmp_path)
    backend = DemoBackend(tiny_pipe, settings)
    values = {"num_frames": 5, "num_inference_steps": 3, "height": 32, "width": 48}
    target = output_path(tmp_path, "t2v", 5)
    resolved = build_request(settings, "a dog", "t2v", "", {"video": [], "image": None, "images": []}, values, target)
    payload = {"plan": resolved, "extra_record": {"demo": {"ui": {"seed": 42}}}}
    published: list[tuple[str, dict]] = []
    board_publish = backend.events.publish

    def publish(job: str, **event: Any) -> None:
        published.append((job, event))
        board_publish(job, **event)

    monkeypatch.setattr(backend.events, "publish", publish)
    result = backend.submit(payload, job_id="first")
    steps = [(e["step"], e["total"]) for job, e in published if job == "first" and e.get("step")]
    assert steps == [(1, 3), (2, 3), (3, 3)], "every step is published on the backend's board"
    assert backend.events.latest("first")[1] == {
        "state": "succeeded",
        "step": 3,
        "total": 3,
        "phase": "decode",
        "ended": True,
    }
    assert result.output == target and target.is_file() and result.parameters["demo"]["ui"] == {"seed": 42}
    assert output_path(tmp_path, "t2v", 5) != target, "a new output never reuses an existing name"
    again = backend.submit(payload)
    assert again.output != target and again.output.name.startswith("t2v_") and target.is_file()

    cancel = threading.Event()
    cancel.set()
    payload["plan"] = resolved.with_output(str(tmp_path / "cancelled.mp4"))
    with pytest.raises(GenerationCancelled):
        backend.submit(payload, cancel=cancel, job_id="stopped")
    assert not (tmp_path / "cancelled.mp4").exists()
    assert backend.events.latest("stopped")[1]["state"] == "cancelled"
    from bernini import enhancer

    def fake_enhance(prompt, task_type, config, **media):
        return enhancer.EnhanceResult(f"{prompt}, in {task_type} style", prompt, True, "fake", None, 1, 0.0)

    monkeypatch.setattr(enhancer, "enhance_prompt", fake_enhance)
    payload["plan"] = resolved.with_output(str(tmp_path / "enhanced.mp4"))
    settings = DemoSettings(save_dir=tmp_path, use_pe=True, enhancer=enhancer.EnhancerConfig())
    result = DemoBackend(tiny_pipe, settings).submit({**payload, "use_pe": True})
    assert result.prompt == "a dog, in t2v style" and result.parameters["prompt_enhancer"]["original_prompt"] == "a dog"
    with pytest.raises(BerniniError, match="over this server's limit of 360"):
        build_request(settings, "x", "t2v", None, {"video": [], "image": None, "images": []}, {"num_frames": 361}, "o")


def test_the_progress_bar_shows_what_the_board_published_for_the_job():
    """The page's bar follows the job's events on the board (published from the worker thread), not a callback:
    the wait, the encoding, each step, and it returns once the job ended."""
    import asyncio
    import threading

    from bernini.frontends.demo.handlers import show_progress
    from bernini.jobs import EventBoard

    board = EventBoard()
    shown: list[tuple[Any, str]] = []
    events = [
        {"state": "queued"},
        {"state": "running", "step": 0, "total": 2, "phase": "encode"},
        {"step": 1, "phase": "denoise"},
        {"step": 1, "phase": "denoise"},  # the same step again: the bar shows it again, harmlessly
        {"step": 2, "phase": "decode"},
        {"state": "succeeded", "ended": True},
    ]

    def publish() -> None:
        for count, event in enumerate(events):
            deadline = time.monotonic() + 30
            while len(shown) < count and time.monotonic() < deadline:  # one event at a time: none is merged away
                time.sleep(0.01)
            board.publish("job-1", **event)
        board.publish("job-2", step=9, total=9)  # another job's events never reach this bar

    def progress(value, desc=None, unit=None) -> None:
        shown.append((value, desc))

    threading.Thread(target=publish, daemon=True).start()
    asyncio.run(asyncio.wait_for(show_progress(board, "job-1", progress), 30))
    assert shown == [
        (0, "waiting for the running generation"),
        (0, "encoding inputs"),
        ((1, 2), "denoising"),
        ((1, 2), "denoising"),
        ((2, 2), "denoising"),
    ]


RANK_SCRIPT = r"""
import json, sys, threading, time
from types import SimpleNamespace
import numpy as np
import torch.distributed as dist
from bernini.frontends.demo import DemoBackend, DemoSettings, GenerationCancelled, worker_loop
from bernini.runtime.parallel.groups import RankZeroChannel
from bernini.resolve import resolve_request
from bernini.request import GenerationRequest

rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
seen = {"steps": [], "prompts": []}

class FakePipe:
    def set_progress_bar_config(self, **kwargs):
        pass

    def generate(self, request, enhance=None, callback=None, output_type="np"):
        seen["prompts"].append(request.prompt)
        for index in range(request.num_inference_steps):
            callback(self, index, 1000 - index, {})
            seen["steps"].append(index)
        parameters = {"request": {"prompt": request.prompt}, "resolved": {"frames": 5}}
        return SimpleNamespace(frames=np.zeros((5, 16, 16, 3), np.uint8), parameters=parameters)

backend = DemoBackend(FakePipe(), DemoSettings(save_dir=out), RankZeroChannel(dist.new_group(backend="gloo")))
assert backend.collective.enabled and backend.collective.rank == rank
shared = backend.collective.share(lambda: f"enhanced on rank {rank}")
if rank == 0:
    request = {"prompt": "first", "task_type": "t2v", "num_inference_steps": 3, "output": f"{out}/a.mp4"}
    backend.submit({"plan": resolve_request(GenerationRequest(**request))})
    cancel = threading.Event()
    cancel.set()
    try:
        second = resolve_request(GenerationRequest(**{**request, "prompt": "second", "output": f"{out}/b.mp4"}))
        backend.submit({"plan": second}, cancel=cancel)
    except GenerationCancelled:
        seen["cancelled"] = True
    stop = backend.keep_alive(0.05)
    time.sleep(0.3)
    stop.set()
    backend.shutdown()
else:
    seen["exit"] = worker_loop(backend)
seen["shared"] = shared
with open(f"{out}/rank{rank}.json", "w") as handle:
    json.dump(seen, handle)
dist.destroy_process_group()
"""


def test_ranks_follow_rank_zero_over_a_gloo_group(tmp_path):
    """Two real processes: requests, the Stop flag, the enhancer's result and keep-alive pings reach rank 1."""
    port = str(_free_port())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    ranks = [
        subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(r), port, str(tmp_path)], env=env, cwd=ROOT)
        for r in (0, 1)
    ]
    try:
        assert [p.wait(timeout=60) for p in ranks] == [0, 0]
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
    zero, one = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert zero["prompts"] == one["prompts"] == ["first", "second"]
    assert zero["steps"] == one["steps"] == [0, 1, 2], "the cancelled request stops on every rank at once"
    assert zero["cancelled"] and one["exit"] == 0
    assert zero["shared"] == one["shared"] == "enhanced on rank 0"
    assert (tmp_path / "a.mp4").is_file() and (tmp_path / "a.mp4.json").is_file()
    assert not (tmp_path / "b.mp4").exists()


# ------------------------------------------------------------------------------------- the server
def _free_port() -> int:
    from serve_support import free_port

    return free_port()


@pytest.fixture(scope="module")
def demo_server(tiny_bundle, tmp_path_factory):
    """``python gradio_demo.py`` on the tiny bundle: yields (url, save_dir)."""
    save_dir = tmp_path_factory.mktemp("demo_save")
    log_path = save_dir.parent / "demo_server.log"
    port = _free_port()
    command = [sys.executable, str(ROOT / "gradio_demo.py"), "--config", str(tiny_bundle), "--device", "cpu"]
    command += ["--port", str(port), "--save_dir", str(save_dir)]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the demo exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the demo did not start in 120 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url, save_dir
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def client(demo_server):
    from gradio_client import Client

    return Client(demo_server[0], verbose=False)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """A 9-frame 96x64 clip and a text file renamed .mp4."""
    folder = tmp_path_factory.mktemp("clips")
    frames = (np.random.default_rng(0).random((9, 64, 96, 3)) * 255).astype(np.uint8)
    good = write_video(folder / "clip.mp4", frames, 8)
    bad = folder / "bad.mp4"
    bad.write_text("this is not a video\n")
    return {"good": good, "bad": bad}


def _generate(client, task: str, videos: list[Path] | None = None, **values: Any) -> dict[str, Any]:
    from gradio_client import handle_file

    prompt = values.pop("prompt", "a red ball rolls")
    parameters = {**TINY, "seed": 123, **values}
    result = client.predict(
        prompt=prompt,
        task=task,
        guidance_mode=parameters.pop("guidance_mode", TASKS[task].guidance_mode),
        videos=[handle_file(str(v)) for v in videos or []],
        image=None,
        **parameters,
        api_name="/generate",
    )
    _video, _image, files, sidecar, prompt_used, status = result
    return {"files": [Path(f) for f in files], "sidecar": sidecar, "prompt": prompt_used, "status": status}


def _frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def _saved(save_dir: Path, downloaded: Path) -> Path:
    """The file the server last wrote under this name in a session folder of the save dir (the client gets a
    downloaded copy; sessions may write the same name in the same second)."""
    found = [p for p in save_dir.glob(f"*/{downloaded.name}") if p.parent.name != ".gradio"]
    assert found, f"{downloaded.name} is missing from the save dir's session folders"
    return max(found, key=lambda path: path.stat().st_mtime_ns)


def test_t2v_through_the_api_writes_video_and_sidecar(client, demo_server):
    _url, save_dir = demo_server
    out = _generate(client, "t2v", prompt="a red ball rolls", omega_txt=3.5)
    video, sidecar = out["files"]
    assert video.name.startswith("t2v_") and video.suffix == ".mp4" and sidecar.name == video.name + ".json"
    saved = _saved(save_dir, video)
    assert _frame_count(saved) == 5
    record = json.loads(_saved(save_dir, sidecar).read_text())
    assert page_record(record) == out["sidecar"]
    shown = json.dumps(out["sidecar"])
    assert record["output"] == str(saved) and '"/' not in shown and str(save_dir.parent) not in shown, shown
    request = record["request"]
    assert (request["task_type"], request["guidance_mode"], request["seed"]) == ("t2v", "t2v_apg", 123)
    assert (request["num_inference_steps"], request["num_frames"], request["omega_txt"]) == (2, 5, 3.5)
    assert (record["resolved"]["height"], record["resolved"]["width"], record["resolved"]["frames"]) == (64, 96, 5)
    ui = record["demo"]["ui"]
    assert (ui["task"], ui["guidance_mode"], ui["num_inference_steps"], ui["seed"]) == ("t2v", "t2v_apg", 2, 123)
    assert out["prompt"] == "a red ball rolls" and "5 frame(s)" in out["status"]


def test_v2v_through_the_api_edits_the_uploaded_clip(client, demo_server, clips):
    _url, save_dir = demo_server
    out = _generate(client, "v2v", [clips["good"]], num_frames=9, guidance_mode="v2v")
    video, _sidecar = out["files"]
    assert video.name.startswith("v2v_")
    assert _frame_count(_saved(save_dir, video)) == 9
    record = out["sidecar"]
    assert (record["request"]["task_type"], record["request"]["guidance_mode"]) == ("v2v", "v2v")
    assert record["demo"]["uploads"]["video"] == ["clip.mp4"]
    assert record["request"]["video"] == ["clip.mp4"], "the page shows the upload's name, not the server path"
    on_disk = json.loads(_saved(save_dir, _sidecar).read_text())
    upload = Path(on_disk["request"]["video"][0])
    assert upload.is_relative_to(save_dir), "uploads must stay under the save dir"


def test_t2i_through_the_api_writes_one_png(client, demo_server):
    out = _generate(client, "t2i", num_frames=81)
    image = out["files"][0]
    assert image.name.startswith("t2i_") and image.suffix == ".png"
    assert out["sidecar"]["resolved"]["frames"] == 1 and out["sidecar"]["demo"]["ui"]["num_frames"] == 81


def test_bad_upload_is_a_one_line_error_and_the_server_keeps_serving(client, clips):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as caught:
        _generate(client, "v2v", [clips["bad"]])
    message = str(caught.value)
    assert message.startswith(BAD_MESSAGE) and "\n" not in message and "Traceback" not in message
    out = _generate(client, "v2v", [clips["good"]])
    assert out["sidecar"]["resolved"]["frames"] == 5


# ------------------------------------------------------------------------------------ the browser
class Chromium:
    """Headless Chromium driven over the DevTools protocol on ``--remote-debugging-pipe`` (fds 3 and 4)."""

    FLAGS = (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--remote-debugging-pipe",
        "--window-size=1280,1700",
    )

    def __init__(self, executable: str, profile: Path) -> None:
        to_browser_r, self._out = os.pipe()
        self._in, from_browser_w = os.pipe()

        def use_fds_3_and_4() -> None:  # runs in the child between fork and exec
            read, write = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(read, 3)
            os.dup2(write, 4)

        self.proc = subprocess.Popen(
            [executable, *self.FLAGS, f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=use_fds_3_and_4,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._ids = itertools.count(1)
        page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]

    def _message(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict:
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message()
            if reply.get("id") == ident:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def page(self, method: str, **params: Any) -> dict:
        return self.send(method, self.session, **params)

    def evaluate(self, expression: str) -> Any:
        reply = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {expression}")

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the element (Gradio's widgets react to pointer events)."""
        center = self.wait_for(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return r.width > 0 ? [r.x + r.width / 2, r.y + r.height / 2] : null; })()"
        )
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", type=kind, x=center[0], y=center[1], button="left", clickCount=1)

    def type_into(self, selector: str, text: str) -> None:
        self.click(selector)
        self.evaluate(f"document.querySelector({json.dumps(selector)}).select()")
        self.page("Input.insertText", text=text)
        for kind in ("keyDown", "keyUp"):
            self.page("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13)

    def upload(self, selector: str, path: Path) -> None:
        self.wait_for(f"!!document.querySelector({json.dumps(selector)})")
        handle = self.page("Runtime.evaluate", expression=f"document.querySelector({json.dumps(selector)})")
        self.page("DOM.setFileInputFiles", files=[str(path)], objectId=handle["result"]["objectId"])

    def screenshot(self, path: Path) -> Path:
        data = self.page("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._in)
        os.close(self._out)


def _text(selector: str) -> str:
    return f"((document.querySelector({json.dumps(selector)}) || {{}}).innerText || '')"


def _uploaded(stem: str) -> str:
    """The file list shows ``stem`` (Gradio splits name and suffix into two lines) and no upload is running."""
    text = _text("#videos")
    return f"{text}.includes({json.dumps(stem)}) && !{text}.includes('Uploading') && !{text}.includes('Drop File')"


def test_browser_selects_task_reports_a_bad_upload_and_shows_the_video(demo_server, clips, tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is absent; install it with: apt-get update && apt-get install -y chromium")
    url, save_dir = demo_server
    browser = Chromium(CHROMIUM, tmp_path / "profile")
    try:
        browser.page("Page.enable")
        browser.page("Page.navigate", url=url)
        browser.wait_for("!!document.querySelector('#generate_btn')", timeout=30)
        assert browser.evaluate("document.querySelector('#guidance_mode input').value") == "t2v_apg"

        browser.click("#task input")
        browser.click("#task [role=option][aria-label=v2v]")
        browser.wait_for("document.querySelector('#guidance_mode input').value === 'v2v_apg'")
        assert "v2v" in browser.evaluate(_text("#task_hint"))

        browser.type_into("#prompt textarea", "make the ball blue")
        for elem_id, value in (("max_size", 256), ("num_frames", 5), ("steps", 2), ("fps", 8)):
            browser.type_into(f"#{elem_id} input[type=number]", str(value))

        browser.upload("#videos input[type=file]", clips["bad"])
        browser.wait_for(_uploaded("bad"))
        browser.click("#generate_btn")
        toast = browser.wait_for(_text("[data-testid=toast-text]"))
        assert toast.startswith(BAD_MESSAGE) and "Traceback" not in browser.evaluate("document.body.innerText")
        time.sleep(1.0)  # let the toast finish sliding in
        shots = [browser.screenshot(tmp_path / "demo_bad_upload.png")]

        browser.click("[data-testid=toast-close]")
        browser.click("#videos button[aria-label=Clear]")
        browser.upload("#videos input[type=file]", clips["good"])
        browser.wait_for(_uploaded("clip"))
        browser.click("#generate_btn")
        source = browser.wait_for(
            "(() => { const v = document.querySelector('#result_video video'); return v && v.src; })()", timeout=60
        )
        assert "v2v_" in source and source.endswith(".mp4")
        status = browser.wait_for(f"{_text('#status')}.includes('Wrote') && {_text('#status')}")
        assert "5 frame(s)" in status and "v2v_apg" in status
        used = browser.evaluate("document.querySelector('#prompt_used textarea, #prompt_used input').value")
        assert used == "make the ball blue"

        shots.append(browser.screenshot(tmp_path / "demo_v2v.png"))
        artifacts = os.environ.get("BERNINI_TEST_ARTIFACTS")
        for shot in shots:
            if artifacts:
                Path(artifacts).mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, Path(artifacts) / shot.name)
            print(f"screenshot: {shot}")
    except Exception:
        print(f"failure screenshot: {browser.screenshot(tmp_path / 'failure.png')}")
        raise
    finally:
        browser.close()
    name = source.rsplit("/", 1)[-1]
    saved = _saved(save_dir, Path(name))
    record = json.loads(saved.with_name(f"{name}.json").read_text())
    ui = record["demo"]["ui"]
    assert (ui["task"], ui["guidance_mode"], ui["num_inference_steps"], ui["num_frames"]) == ("v2v", "v2v_apg", 2, 5)
    assert record["request"]["prompt"] == "make the ball blue" and _frame_count(saved) == 5


# ------------------------------------------------------------------- cancelling, privacy, messages
def test_cancel_stops_at_the_next_step_and_frees_the_worker(demo_server):
    """gradio_client's ``cancel`` fires the Stop button's cancel event (the path a closed page takes too): the
    job stops at its next step, writes nothing, and the next request runs."""
    from gradio_client import Client

    _url, save_dir = demo_server
    client = Client(demo_server[0], verbose=False)
    before = set(save_dir.rglob("*.mp4"))
    slow = {**TINY, "num_inference_steps": 50, "num_frames": 33, "height": 256, "width": 448, "seed": 1}
    job = client.submit(
        prompt="a long run", task="t2v", guidance_mode="t2v_apg", videos=[], image=None, **slow, api_name="/generate"
    )
    deadline = time.monotonic() + 120
    while not any(unit.index for unit in job.status().progress_data or []):
        assert time.monotonic() < deadline and not job.done(), "the job never reached its first step"
        time.sleep(0.05)
    assert job.cancel()
    while not job.done():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    out = _generate(client, "t2i")
    assert out["files"][0].suffix == ".png"
    assert set(save_dir.rglob("*.mp4")) == before, "the cancelled job stopped before writing its video"
    log = (save_dir.parent / "demo_server.log").read_text()
    assert "generation cancelled: stopped" in log


def test_outputs_are_per_session_and_unguessable_and_the_page_shows_no_server_path(client, demo_server):
    from gradio_client import Client

    url, save_dir = demo_server
    other = Client(url, verbose=False)
    mine = _saved(save_dir, _generate(client, "t2i")["files"][0])
    name = _generate(other, "t2i")["files"][0].name
    theirs = _saved(save_dir, Path(name))
    assert mine.parent != theirs.parent and {mine.parent.parent, theirs.parent.parent} == {save_dir}
    assert len(mine.parent.name) >= 16 and mine.parent.name not in mine.name, "a random folder per session"

    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert status(str(theirs)) == 200, "the owner's link works"
    assert status(str(save_dir / theirs.name)) >= 400, "knowing the naming scheme is not enough"


def test_errors_speak_the_pages_language(client, clips):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as caught:
        _generate(client, "v2v", [])
    assert str(caught.value) == "task v2v needs a source video; upload a source video"
    with pytest.raises(AppError) as caught:
        _generate(client, "t2v", prompt="")
    assert str(caught.value) == "prompt is required and must be a non-empty string: type a prompt"
    uploads = {"/srv/x/.gradio/ab12/clip.mp4": "clip.mp4"}
    assert user_message("task r2v needs at least one reference image; pass --images PATH [PATH ...]", uploads) == (
        "task r2v needs at least one reference image; upload one under Image or Reference images"
    )
    assert user_message("cannot read /srv/x/.gradio/ab12/clip.mp4 nor /srv/other/y.png", uploads) == (
        "cannot read clip.mp4 nor y.png"
    )
    record = {"output": str(clips["good"]), "request": {"prompt": "/imagine a fox", "video": [str(clips["bad"])]}}
    assert page_record(record) == {"output": "clip.mp4", "request": {"prompt": "/imagine a fox", "video": ["bad.mp4"]}}


def _demo_command(tiny_bundle: Path, *flags: str) -> list[str]:
    return [sys.executable, str(ROOT / "gradio_demo.py"), "--config", str(tiny_bundle), "--device", "cpu", *flags]


def _demo_env(tmp: Path) -> dict[str, str]:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost", "TMPDIR": str(tmp)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_a_port_in_use_is_one_line_and_share_without_auth_warns(tiny_bundle, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        command = _demo_command(tiny_bundle, "--port", str(port), "--share", "--save_dir", str(tmp_path / "s"))
        result = subprocess.run(command, env=_demo_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"error: cannot listen on 127.0.0.1:{port} (") and lines[-1].endswith(
        "pick another with --port"
    )
    assert "warning: --share opens a public gradio.live link that anyone can use; add --auth USER:PASSWORD" in lines
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_the_temporary_save_dir_is_removed_on_exit(tiny_bundle, tmp_path, signame):
    import signal

    if not hasattr(signal, signame):
        pytest.skip(f"no {signame} on this platform")
    port = _free_port()
    proc = subprocess.Popen(
        _demo_command(tiny_bundle, "--port", str(port)),
        env=_demo_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the demo did not start"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                    break
            except OSError:
                time.sleep(0.3)
        made = list(tmp_path.glob("bernini_gradio_*"))
        assert len(made) == 1 and (made[0] / ".gradio").is_dir()
        proc.send_signal(getattr(signal, signame))
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 130)
    assert not made[0].exists(), "the demo's temporary folder outlived it"


# ------------------------------------------------------------------------------------- the full model
@pytest.fixture(scope="module")
def full_pipe(full_bundle):
    from bernini import BerniniPipeline

    pipe = BerniniPipeline.from_pretrained(full_bundle, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_full_task_change_fills_every_control_from_the_shipped_settings():
    from bernini.frontends.demo.layout import full_task_updates
    from bernini.sampling.full_presets import FULL_PRESETS, VERSIONS

    for version in VERSIONS:
        for task in TASK_CHOICES:
            preset = FULL_PRESETS[version][task]
            guidance, hint, frames, height, width, *controls = full_task_updates(task, version)
            assert (guidance["value"], frames["value"]) == (preset.guidance_mode, preset.num_frames)
            assert task in hint["value"] and height["visible"] == (task in ("t2i", "t2v"))
            assert (height.get("value"), width.get("value")) == (preset.height, preset.width)
            assert [c["value"] for c in controls] == [
                preset.num_inference_steps,
                preset.omega_vid,
                preset.omega_img,
                preset.omega_txt,
                preset.omega_scale,
                preset.omega_tgt,
                preset.planning_step,
                preset.vit_denoising_step,
                1.2,
                1.0,
            ], (version, task)
    assert full_task_updates("t2v", "v2")[5:] != full_task_updates("t2v", "v1")[5:], "the version matters"


def _components(app) -> dict[str, dict]:
    return {c["props"].get("elem_id"): c["props"] for c in app.config["components"] if c["props"].get("elem_id")}


def test_the_page_offers_the_loaded_models_modes_and_planner_controls(full_pipe, tiny_pipe, tmp_path):
    from bernini.frontends.demo.layout import build_ui
    from bernini.sampling.full_presets import FULL_PRESETS
    from bernini.sampling.guidance import FULL_MODEL_MODES, GUIDANCE_MODES

    planner = ("omega_tgt", "planning_step", "vit_denoising_step", "vit_txt_cfg", "vit_img_cfg")
    full = _components(build_ui(DemoBackend(full_pipe, DemoSettings(save_dir=tmp_path))))
    assert [choice[0] for choice in full["guidance_mode"]["choices"]] == list(FULL_MODEL_MODES)
    assert all(full[name]["visible"] for name in planner) and not full["eta"]["visible"]
    preset = FULL_PRESETS[full_pipe.source.planner_version]["t2v"]
    assert (full["guidance_mode"]["value"], full["steps"]["value"]) == (
        preset.guidance_mode,
        preset.num_inference_steps,
    )
    assert (full["planning_step"]["value"], full["omega_tgt"]["value"]) == (preset.planning_step, preset.omega_tgt)
    plain = _components(build_ui(DemoBackend(tiny_pipe, DemoSettings(save_dir=tmp_path))))
    assert [choice[0] for choice in plain["guidance_mode"]["choices"]] == list(GUIDANCE_MODES)
    assert not any(plain[name]["visible"] for name in planner) and plain["eta"]["visible"]


def _run_handler(backend, task: str, videos=None, image=None, gallery=None, **values):
    import asyncio
    from types import SimpleNamespace

    from bernini.frontends.demo.handlers import make_generate_handler

    ui = {**TINY, "flow_shift": 5.0, "seed": 7, "omega_vid": 1.1, "omega_img": 1.3, "omega_txt": 3.5}
    ui.update(omega_scale=0.9, eta=0.5, momentum=0.0, omega_tgt=0.7, planning_step=2, vit_denoising_step=1)
    ui.update(vit_txt_cfg=1.3, vit_img_cfg=0.9, num_inference_steps=2, **values)
    handler = make_generate_handler(backend)
    call = handler(
        prompt="a red ball rolls",
        task=task,
        guidance_mode="vae_txt_vit_wapg",
        videos=videos,
        image=image,
        gallery=gallery,
        enhance=False,
        request=SimpleNamespace(session_hash="full"),
        progress=lambda *args, **kwargs: None,
        **ui,
    )
    _video, _image, files, sidecar, _prompt, status = asyncio.run(call)
    return [Path(f) for f in files], sidecar, status


@pytest.mark.parametrize("task", ["t2v", "v2v"])
def test_full_model_runs_through_the_handler_with_every_control_explicit(full_pipe, clips, tmp_path, task):
    """The demo's code path on the full model: the planner runs with the page's values, none of the preset's."""
    from bernini.sampling.full_presets import ENGLISH_NEGATIVE_PROMPT

    backend = DemoBackend(full_pipe, DemoSettings(save_dir=tmp_path))
    videos = [str(clips["good"])] if task == "v2v" else None
    files, record, status = _run_handler(backend, task, videos)
    assert files[0].is_file() and "guidance vae_txt_vit_wapg" in status
    planner = record["resolved"]["planner"]
    assert planner["version"] == full_pipe.source.planner_version
    assert (planner["planning_step"], planner["vit_denoising_step"], len(planner["reveal_counts"])) == (2, 1, 2)
    assert (planner["vit_txt_cfg"], planner["vit_img_cfg"]) == (1.3, 0.9)
    assert set(planner["context_rows"]) == {"C_full", "C_txt", "C_tgt", "C_null"}
    request = record["request"]
    assert (request["omega_tgt"], request["omega_txt"], request["omega_vid"], request["omega_scale"]) == (
        0.7,
        3.5,
        1.1,
        0.9,
    )
    assert (request["num_inference_steps"], record["resolved"]["frames"]) == (2, 5)
    assert len(record["resolved"]["timesteps"]) == 2
    # what the page has no control for still comes from the task's shipped settings
    assert (request["neg_prompt"] == ENGLISH_NEGATIVE_PROMPT) == (task == "v2v")
    _files, again, _status = _run_handler(backend, task, videos, planning_step=3)
    assert len(again["resolved"]["planner"]["reveal_counts"]) == 3


@pytest.mark.parametrize("task", ["t2i", "i2i", "mv2v", "ads2v", pytest.param("r2v", marks=pytest.mark.slow), "rv2v"])
def test_every_other_task_runs_through_the_demo_on_the_full_model(full_pipe, clips, tmp_path, task):
    """The remaining tasks through the same handler: the planner sees every routed source."""
    from bernini.io.output import write_image

    picture = str(write_image(tmp_path / "ref.png", np.random.default_rng(1).random((48, 48, 3))))
    clip = str(clips["good"])
    media = {
        "t2i": {},
        "i2i": {"image": picture},
        "mv2v": {"videos": [clip]},
        "ads2v": {"videos": [clip, clip], "image": picture},
        "r2v": {"gallery": [(picture, "a")]},
        "rv2v": {"videos": [clip], "gallery": [(picture, "a")]},
    }[task]
    files, record, status = _run_handler(DemoBackend(full_pipe, DemoSettings(save_dir=tmp_path)), task, **media)
    assert files[0].is_file() and record["resolved"]["task_type"] == task
    planner = record["resolved"]["planner"]
    sources = len(media.get("videos", [])) + ("image" in media) + len(media.get("gallery", []))
    assert len(planner["source_tokens"]) == sources and sum(planner["reveal_counts"]) == planner["target_slots"]
    assert record["resolved"]["frames"] == (1 if task in ("t2i", "i2i") else 5)


def test_the_demo_plans_a_bernini_r_request_once_for_the_loaded_model(tmp_path, monkeypatch):
    """The page's plan is made for the loaded model's defaults, so the pipeline's ``with_model_defaults`` only
    checks it (it used to be made without them and planned again from the request inside ``generate``)."""
    import bernini.resolve as plan_module
    from bernini.frontends.demo import build_request
    from bernini.resolved import ModelDefaults, SourceIdPolicy

    defaults = ModelDefaults("flow_match_euler", SourceIdPolicy(True, False, 3))
    values = {"num_frames": 5, "num_inference_steps": 3, "height": 32, "width": 48}
    media = {"video": [], "image": None, "images": []}
    resolved = build_request(DemoSettings(save_dir=tmp_path), "a dog", "t2v", "", media, values, "o.mp4", defaults)
    assert resolved.for_model == "bernini-r" and resolved.filled
    assert resolved.scheduler.name == "flow_match_euler" and resolved.source_ids == SourceIdPolicy(True, False, 3)
    calls: list[object] = []
    real = plan_module.resolve_request
    monkeypatch.setattr(plan_module, "resolve_request", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert with_model_defaults(resolved, defaults) == resolved and calls == []
