"""Prompt enhancer tests against a real chat-completions server on loopback.

The real ``openai.OpenAI`` client talks HTTP to :class:`ChatServer`, which records every request and
replies as each test scripts it. Nothing in the SDK is mocked.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bernini.enhancer import (
    DEFAULT_PE_MODEL,
    JSON_TASKS,
    TEMPLATES,
    EnhancerConfig,
    case_with_prompt,
    enhance_prompt,
    enhancer_available,
    parse_rewritten_text,
)
from bernini.enhancer.client import MAX_REPLY_BYTES, ReplyTooLarge

SECRET = "sk-test-ZQX9-very-distinctive-key-4242"


# ----------------------------------------------------------------------------------------------
# A scripted OpenAI-compatible server


@dataclass
class Reply:
    """One scripted reply. ``kind``: text | status | delay | unsized (a text reply without Content-Length: its body
    ends when the server closes the connection)."""

    kind: str = "text"
    content: str | None = "A rewritten prompt."
    status: int = 200
    message: str = ""
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def text(content: str | None) -> Reply:
    return Reply("text", content=content)


def error(status: int, message: str = "something went wrong", **headers: str) -> Reply:
    return Reply("status", status=status, message=message, headers=headers)


def delayed(seconds: float, content: str = "late reply") -> Reply:
    return Reply("delay", content=content, delay_s=seconds)


def unsized(content: str) -> Reply:
    return Reply("unsized", content=content)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class ChatServer:
    """A threaded HTTP server that speaks ``POST /v1/chat/completions``."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.script: deque[Reply] = deque()
        self.default = text("A rewritten prompt.")
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # silence stderr
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                body = json.loads(raw) if raw else {}
                with server._lock:
                    server.requests.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    reply = server.script.popleft() if server.script else server.default
                if self.path != "/v1/chat/completions":
                    reply = error(404, f"no route {self.path}")
                try:
                    if reply.kind == "delay":
                        time.sleep(reply.delay_s)
                    if reply.kind == "status":
                        payload = {"error": {"message": reply.message, "type": "test_error", "code": str(reply.status)}}
                        self._send(reply.status, payload, reply.headers)
                    elif reply.kind == "unsized":
                        self._send_unsized(completion(body.get("model", "?"), reply.content))
                    else:
                        content = reply.content
                        if content is not None:  # an endpoint that echoes what it was sent
                            content = content.replace("{authorization}", self.headers.get("Authorization", ""))
                        self._send(200, completion(body.get("model", "?"), content), reply.headers)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key.replace("_", "-"), value)
                self.end_headers()
                self.wfile.write(data)

            def _send_unsized(self, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                for start in range(0, len(data), 1 << 16):
                    self.wfile.write(data[start : start + (1 << 16)])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def push(self, *replies: Reply) -> None:
        self.script.extend(replies)

    def user_parts(self, index: int = -1) -> list[dict[str, Any]]:
        return self.requests[index].body["messages"][1]["content"]

    def image_urls(self, index: int = -1) -> list[str]:
        return [p["image_url"]["url"] for p in self.user_parts(index) if p["type"] == "image_url"]


def completion(model: str, content: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


@pytest.fixture
def server() -> Iterator[ChatServer]:
    srv = ChatServer()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
        srv.thread.join(timeout=5)


class FakeTime:
    """An injected clock whose sleeps only advance the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def config_for(srv: ChatServer | str, **overrides: Any) -> EnhancerConfig:
    base_url = srv if isinstance(srv, str) else srv.base_url
    values: dict[str, Any] = {"model": "test-vlm", "base_url": base_url, "api_key": SECRET, "timeout_s": 5.0}
    values.update(overrides)
    return EnhancerConfig(**values)


def decode_data_uri(uri: str) -> tuple[str, bytes]:
    head, b64 = uri.split(",", 1)
    assert head.startswith("data:") and head.endswith(";base64")
    return head[5:-7], base64.b64decode(b64)


def synthetic_video(n: int, value_step: int = 20) -> np.ndarray:
    """Frames whose pixels encode their index (frame i is filled with i*step, plus a fixed pattern)."""
    video = np.zeros((n, 6, 8, 3), dtype=np.uint8)
    for i in range(n):
        video[i] = (i * value_step) % 256
        video[i, 0, 0] = (i, 255 - i, 7)
    return video


def closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# ----------------------------------------------------------------------------------------------
# 1. What the request carries


def test_t2v_request_carries_model_system_prompt_and_no_response_format(server: ChatServer) -> None:
    server.push(text("  A cinematic rewrite.  "))
    result = enhance_prompt("a cat playing piano", "t2v", config_for(server))
    assert result.enhanced and result.prompt == "A cinematic rewrite."
    assert result.original == "a cat playing piano" and result.attempts == 1 and result.warning is None
    assert result.model == "test-vlm"

    (req,) = server.requests
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {SECRET}"
    body = req.body
    assert body["model"] == "test-vlm"
    assert body["max_completion_tokens"] == 8192
    assert "response_format" not in body
    system, user = body["messages"]
    assert system == {"role": "system", "content": TEMPLATES["t2v"].system}
    assert user["role"] == "user"
    assert user["content"] == [{"type": "text", "text": "a cat playing piano"}]


@pytest.mark.parametrize("task", sorted(TEMPLATES))
def test_every_task_sends_its_template_and_json_mode_only_for_reference_tasks(server: ChatServer, task: str) -> None:
    reply = json.dumps({"rewritten_text": "Rewritten."}) if task in JSON_TASKS else "Rewritten."
    server.push(text(reply))
    video = synthetic_video(5)
    result = enhance_prompt("make it nicer", task, config_for(server), videos=[video], image=video[0])
    assert result.enhanced and result.prompt == "Rewritten.", result.warning

    body = server.requests[-1].body
    template = TEMPLATES[task]
    assert body["messages"][0]["content"] == template.system
    first = server.user_parts()[0]
    assert first["type"] == "text"
    assert first["text"].startswith(template.instruction)
    assert first["text"].endswith("make it nicer")
    if task in JSON_TASKS:
        assert body["response_format"] == {"type": "json_object"}
    else:
        assert "response_format" not in body


def test_json_mode_is_exactly_the_reference_tasks() -> None:
    assert JSON_TASKS == {"r2v", "r2i", "rv2v", "vrc2v"}
    assert TEMPLATES["mv2v"] == TEMPLATES["v2v"] and TEMPLATES["vrc2v"] == TEMPLATES["rv2v"]
    for name in ("t2v", "t2i", "i2i", "v2v", "mv2v", "r2v", "r2i", "rv2v", "vrc2v", "ads2v", "vi2v", "i2v"):
        assert name in TEMPLATES


@pytest.mark.parametrize(("n", "expected"), [(9, [0, 4, 8]), (10, [0, 4, 9]), (2, [0, 0, 1]), (1, [0, 0, 0])])
def test_three_frames_per_video_are_first_middle_last(server: ChatServer, n: int, expected: list[int]) -> None:
    video = synthetic_video(n)
    result = enhance_prompt("add a hat", "v2v", config_for(server), videos=[video])
    assert result.enhanced
    uris = server.image_urls()
    assert len(uris) == 3
    for uri, index in zip(uris, expected, strict=True):
        mime, data = decode_data_uri(uri)
        assert mime == "image/png"
        frame = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        np.testing.assert_array_equal(frame, video[index])


def test_media_order_labels_and_real_mime_types(server: ChatServer, tmp_path: Any) -> None:
    rng = np.random.default_rng(0)
    jpeg_path = tmp_path / "ref.jpg"
    Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(jpeg_path, format="JPEG", quality=90)
    png_named_jpg = tmp_path / "actually_png.jpg"
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(png_named_jpg, format="PNG")
    webp_path = tmp_path / "ref.webp"
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(webp_path, format="WEBP")
    bmp_array = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
    bmp_path = tmp_path / "ref.bmp"
    Image.fromarray(bmp_array).save(bmp_path, format="BMP")
    pil_image = Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8))

    v1, v2 = synthetic_video(9), synthetic_video(5, value_step=50)
    server.push(text(json.dumps({"rewritten_text": "Replace the shirt."})))
    result = enhance_prompt(
        "swap the shirt",
        "rv2v",
        config_for(server),
        videos=[v1, v2],
        image=str(jpeg_path),
        images=[png_named_jpg, webp_path, bmp_path, pil_image],
    )
    assert result.enhanced and result.prompt == "Replace the shirt."

    parts = server.user_parts()
    # text, then ("\n[Image i]:", image_url) pairs
    assert parts[0]["type"] == "text"
    pairs = parts[1:]
    assert len(pairs) == 2 * (3 + 3 + 5)
    for i in range(0, len(pairs), 2):
        assert pairs[i] == {"type": "text", "text": f"\n[Image {i // 2 + 1}]:"}
        assert pairs[i + 1]["type"] == "image_url"
    decoded = [decode_data_uri(u) for u in server.image_urls()]
    frames = [np.asarray(Image.open(io.BytesIO(d)).convert("RGB")) for _, d in decoded[:6]]
    for got, want in zip(frames, [v1[0], v1[4], v1[8], v2[0], v2[2], v2[4]], strict=True):
        np.testing.assert_array_equal(got, want)
    assert decoded[6] == ("image/jpeg", jpeg_path.read_bytes())
    assert decoded[7] == ("image/png", png_named_jpg.read_bytes())
    assert decoded[8] == ("image/webp", webp_path.read_bytes())
    assert decoded[9][0] == "image/png"  # BMP is not accepted by chat APIs: re-encoded losslessly
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(decoded[9][1])).convert("RGB")), bmp_array)
    assert decoded[10][0] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(decoded[10][1]))), np.asarray(pil_image))
    legend = parts[0]["text"]
    assert "[Image 1] to [Image 3]: start, middle and end frames of video 1" in legend
    assert "[Image 7]: reference image0" in legend and "[Image 11]: reference image4" in legend


def test_template_media_selection(server: ChatServer) -> None:
    video = synthetic_video(4)
    img = np.full((4, 4, 3), 9, dtype=np.uint8)
    logs: list[str] = []
    enhance_prompt("a dog", "t2v", config_for(server), videos=[video], image=img, log=logs.append)
    assert server.image_urls() == []
    assert any("does not use" in line for line in logs)
    enhance_prompt("remove the car", "i2i", config_for(server), image=img)
    assert len(server.image_urls()) == 1
    enhance_prompt("edit", "vi2v", config_for(server), videos=[video], image=img)
    assert len(server.image_urls()) == 4 and "the edited first frame" in server.user_parts()[0]["text"]
    enhance_prompt("insert the ad", "ads2v", config_for(server), videos=[video, video])
    assert len(server.image_urls()) == 6


def test_empty_prompt_and_unknown_task_make_no_request(server: ChatServer) -> None:
    for empty in ("", "   "):
        result = enhance_prompt(empty, "t2v", config_for(server))
        assert result.prompt == empty and not result.enhanced and result.warning is None and result.attempts == 0
    result = enhance_prompt("a dog", "x2y", config_for(server))
    assert result.prompt == "a dog" and not result.enhanced
    assert result.warning and "x2y" in result.warning and "\n" not in result.warning
    assert server.requests == []


# ----------------------------------------------------------------------------------------------
# 2. Retries, backoff and budget


def test_429_then_500_then_success_backs_off(server: ChatServer) -> None:
    fake = FakeTime()
    server.push(error(429, "slow down"), error(500, "boom"), text("Fine now."))
    result = enhance_prompt("a dog", "t2v", config_for(server, backoff_s=1.5), sleep=fake.sleep, clock=fake.clock)
    assert result.enhanced and result.prompt == "Fine now." and result.warning is None
    assert result.attempts == 3 and len(server.requests) == 3
    assert fake.sleeps == [1.5, 3.0]
    assert result.seconds == pytest.approx(4.5)


def test_persistent_429_stops_at_max_attempts(server: ChatServer) -> None:
    fake = FakeTime()
    server.default = error(429, "rate limited")
    result = enhance_prompt("a dog", "t2v", config_for(server), sleep=fake.sleep, clock=fake.clock)
    assert not result.enhanced and result.prompt == "a dog" and result.attempts == 4
    assert fake.sleeps == [1.0, 2.0, 4.0]
    assert result.warning == "prompt enhancer failed (HTTP 429 after 4 attempts); using the original prompt"


def test_persistent_429_respects_the_budget(server: ChatServer) -> None:
    fake = FakeTime()
    server.default = error(429, "rate limited")
    cfg = config_for(server, max_attempts=10, budget_s=5.0)
    result = enhance_prompt("a dog", "t2v", cfg, sleep=fake.sleep, clock=fake.clock)
    assert not result.enhanced and result.prompt == "a dog"
    assert fake.sleeps == [1.0, 2.0]  # a third wait of 4 s would end past the 5 s budget
    assert result.attempts == 3 and len(server.requests) == 3
    assert result.seconds <= 5.0
    assert result.warning is not None and "budget" in result.warning and "\n" not in result.warning


def test_backoff_is_capped_and_honours_retry_after(server: ChatServer) -> None:
    fake = FakeTime()
    server.push(error(503, "busy", retry_after="7"), error(503), error(503), text("ok"))
    cfg = config_for(server, backoff_s=20.0, max_attempts=5, budget_s=1000.0)
    result = enhance_prompt("a dog", "t2v", cfg, sleep=fake.sleep, clock=fake.clock)
    assert result.enhanced and result.attempts == 4
    assert fake.sleeps == [20.0, 30.0, 30.0]
    fake2 = FakeTime()
    server.push(error(429, "wait", retry_after="7"), text("ok"))
    result = enhance_prompt("a dog", "t2v", config_for(server), sleep=fake2.sleep, clock=fake2.clock)
    assert result.enhanced and fake2.sleeps == [7.0]


def test_real_timeout_is_bounded_by_the_budget(server: ChatServer) -> None:
    server.default = delayed(2.0)
    cfg = config_for(server, timeout_s=0.3, budget_s=0.9, backoff_s=0.05, max_attempts=10)
    t0 = time.monotonic()
    result = enhance_prompt("a dog", "t2v", cfg)
    wall = time.monotonic() - t0
    assert not result.enhanced and result.prompt == "a dog"
    assert wall < 1.9, wall
    assert result.attempts >= 2
    assert result.warning is not None and "timeout" in result.warning


# ----------------------------------------------------------------------------------------------
# 3. Fallbacks


def test_malformed_json_is_retried_once_then_falls_back(server: ChatServer) -> None:
    fake = FakeTime()
    server.default = text('{"rewritten_text": "unterminated')
    result = enhance_prompt("a man from image0", "r2v", config_for(server), sleep=fake.sleep, clock=fake.clock)
    assert not result.enhanced and result.prompt == "a man from image0"
    assert result.attempts == 2 and fake.sleeps == []
    assert result.warning == (
        "prompt enhancer failed (malformed JSON reply (no rewritten_text) after 2 attempts); using the original prompt"
    )


def test_non_json_reply_for_json_task_fails_but_second_draw_may_succeed(server: ChatServer) -> None:
    server.push(text("Sure! Here is your prompt: a man walking."), text('{"rewritten_text": "Good."}'))
    result = enhance_prompt("a man from image0", "r2i", config_for(server))
    assert result.enhanced and result.prompt == "Good." and result.attempts == 2


@pytest.mark.parametrize("content", ["", None, "   \n ", '""', "```\n```"])
def test_empty_reply_falls_back(server: ChatServer, content: str | None) -> None:
    server.default = text(content)
    result = enhance_prompt("a dog", "t2v", config_for(server))
    assert not result.enhanced and result.prompt == "a dog" and result.attempts == 2
    assert result.warning is not None and "empty reply" in result.warning and "\n" not in result.warning


@pytest.mark.parametrize("reply", [text, unsized], ids=["content-length", "no-content-length"])
def test_a_reply_over_the_size_bound_falls_back_without_a_retry(server: ChatServer, reply) -> None:
    """The SDK would read any body into memory: past MAX_REPLY_BYTES the reply is dropped, announced or not."""
    server.default = reply("A" * MAX_REPLY_BYTES)
    result = enhance_prompt("a dog", "t2v", config_for(server), sleep=lambda s: None)
    assert not result.enhanced and result.prompt == "a dog" and result.attempts == 1 and len(server.requests) == 1
    assert result.warning == "prompt enhancer failed (reply larger than 1 MiB); using the original prompt"
    assert not result.endpoint_failed  # one runaway reply; the next task may still ask
    server.default = reply("A" * (MAX_REPLY_BYTES - 4096))  # just under the bound (with the JSON around it)
    result = enhance_prompt("a dog", "t2v", config_for(server))
    assert result.enhanced and result.prompt == "A" * (MAX_REPLY_BYTES - 4096)


def test_a_reply_over_the_bound_is_recognised_inside_an_older_sdks_connection_error() -> None:
    """openai 1.x wraps whatever its HTTP client raises in APIConnectionError (retryable: "cannot connect"). That SDK
    is not installed here, so a stand-in client raises what it would."""
    import openai

    def create(**request: Any) -> Any:
        try:
            raise ReplyTooLarge(MAX_REPLY_BYTES)
        except ReplyTooLarge as exc:
            raise openai.APIConnectionError(request=None) from exc  # type: ignore[arg-type]

    class Client:
        chat = type("Chat", (), {"completions": type("Completions", (), {"create": staticmethod(create)})})

    result = enhance_prompt("a dog", "t2v", config_for("http://127.0.0.1:9/v1"), client_factory=lambda **_: Client())
    assert not result.enhanced and result.prompt == "a dog" and result.attempts == 1
    assert result.warning == "prompt enhancer failed (reply larger than 1 MiB); using the original prompt"


def test_401_falls_back_immediately(server: ChatServer) -> None:
    fake = FakeTime()
    server.default = error(401, "Invalid authentication")
    result = enhance_prompt("a dog", "t2v", config_for(server), sleep=fake.sleep, clock=fake.clock)
    assert not result.enhanced and result.prompt == "a dog" and result.attempts == 1 and fake.sleeps == []
    assert result.warning == ("prompt enhancer failed (HTTP 401: Invalid authentication); using the original prompt")


@pytest.mark.parametrize("status", [400, 403, 404])
def test_other_client_errors_do_not_retry(server: ChatServer, status: int) -> None:
    server.default = error(status, "nope")
    result = enhance_prompt("a dog", "t2v", config_for(server), sleep=lambda s: None)
    assert not result.enhanced and result.attempts == 1 and f"HTTP {status}" in (result.warning or "")


def test_unreachable_endpoint_falls_back(capfd: pytest.CaptureFixture[str]) -> None:
    fake = FakeTime()
    url = closed_port_url()
    result = enhance_prompt("a dog", "t2v", config_for(url), sleep=fake.sleep, clock=fake.clock)
    assert not result.enhanced and result.prompt == "a dog" and result.attempts == 4
    assert result.warning == (
        f"prompt enhancer failed (cannot connect to {url} after 4 attempts); using the original prompt"
    )
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # the library prints nothing


def test_unreadable_image_falls_back_without_request(server: ChatServer, tmp_path: Any) -> None:
    result = enhance_prompt("edit", "i2i", config_for(server), image=tmp_path / "missing.png")
    assert not result.enhanced and result.prompt == "edit" and server.requests == []
    assert result.warning is not None and "missing.png" in result.warning and "\n" not in result.warning


def test_a_broken_client_factory_falls_back() -> None:
    def factory(**kwargs: Any) -> Any:
        raise RuntimeError(f"cannot build client with {kwargs['api_key']}")

    result = enhance_prompt("a dog", "t2v", config_for("http://127.0.0.1:9/v1"), client_factory=factory)
    assert not result.enhanced and result.prompt == "a dog"
    assert result.warning is not None and SECRET not in result.warning


def test_client_factory_receives_sdk_settings(server: ChatServer) -> None:
    import openai

    seen: dict[str, Any] = {}

    def factory(**kwargs: Any) -> Any:
        seen.update(kwargs)
        return openai.OpenAI(**kwargs)

    result = enhance_prompt("a dog", "t2v", config_for(server, timeout_s=7.0), client_factory=factory)
    assert result.enhanced
    assert seen == {"api_key": SECRET, "base_url": server.base_url, "timeout": 7.0, "max_retries": 0}


def test_no_key_sends_a_placeholder_not_the_environment_key(server: ChatServer, monkeypatch: Any) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment-should-not-be-used")
    result = enhance_prompt("a dog", "t2v", EnhancerConfig(model="m", base_url=server.base_url, api_key=None))
    assert result.enhanced
    assert server.requests[-1].headers["authorization"] == "Bearer EMPTY"


# ----------------------------------------------------------------------------------------------
# 4. The key never leaks


@pytest.mark.parametrize(
    "replies",
    [
        [error(401, f"Incorrect API key provided: {SECRET}. Check it.")],
        [error(401, f"Incorrect API key provided: {SECRET[:8]}*********{SECRET[-6:]}")],
        [error(500, f"internal error for Bearer {SECRET}")] * 4,
        [error(429, f"key {SECRET} is over quota")] * 4,
        [error(400, json.dumps({"auth": SECRET}))],
    ],
)
def test_key_never_leaks(
    server: ChatServer,
    replies: list[Reply],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server.push(*replies)
    lines: list[str] = []
    cfg = config_for(server)
    result = enhance_prompt("a dog", "t2v", cfg, sleep=lambda s: None, log=lines.append)
    assert not result.enhanced and result.warning is not None and "\n" not in result.warning
    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"  # it was really sent

    everything = "\n".join([repr(result), str(result), repr(cfg), str(cfg), *lines, caplog.text, *capfd.readouterr()])
    for piece in (SECRET, SECRET[:12], SECRET[-10:]):
        assert piece not in everything


def test_config_repr_hides_the_key() -> None:
    cfg = EnhancerConfig(model="m", base_url="http://user:pw@host/v1?token=abc", api_key=SECRET)
    text_repr = repr(cfg)
    assert SECRET not in text_repr and "'***'" in text_repr
    assert "pw@" not in text_repr and "token=abc" not in text_repr
    assert "api_key=None" in repr(EnhancerConfig(model="m"))


# ----------------------------------------------------------------------------------------------
# 5. Parsing tolerance, text cleanup, configuration


@pytest.mark.parametrize(
    "reply",
    [
        '{"rewritten_text": "X from image0."}',
        '```json\n{"rewritten_text": "X from image0."}\n```',
        'Here you go:\n```json\n{\n  "rewritten_text": "X from image0."\n}\n```\nEnjoy!',
        'Sure. {"rewritten_text": "X from image0."} Let me know.',
        '{"other": {"a": 1}} then {"rewritten_text": "X from image0."}',
        '{"result": {"rewritten_text": "X from image0."}}',
        '<think>maybe {"rewritten_text": "draft"}</think>{"rewritten_text": "X from image0."}',
    ],
)
def test_parse_rewritten_text_is_tolerant(reply: str) -> None:
    assert parse_rewritten_text(reply) == "X from image0."


@pytest.mark.parametrize(
    "reply", ["", "no json here", '{"rewritten": "x"}', '{"rewritten_text": ""}', '{"rewritten_text": 3}', "{broken"]
)
def test_parse_rewritten_text_rejects(reply: str) -> None:
    assert parse_rewritten_text(reply) is None


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('"A quoted prompt."', "A quoted prompt."),
        ("```text\nA fenced prompt.\n```", "A fenced prompt."),
        ("\u201cCurly quotes.\u201d", "Curly quotes."),
        ("<think>hmm</think>\nThe answer.", "The answer."),
        ('{"rewritten_text": "JSON anyway."}', "JSON anyway."),
        ('He said "hi" and left.', 'He said "hi" and left.'),
    ],
)
def test_text_replies_are_cleaned(server: ChatServer, reply: str, expected: str) -> None:
    server.push(text(reply))
    result = enhance_prompt("a dog", "v2v", config_for(server))
    assert result.enhanced and result.prompt == expected


def test_fenced_json_through_the_server(server: ChatServer) -> None:
    server.push(text('Result:\n```json\n{"rewritten_text": "The man from image0 waves."}\n```'))
    result = enhance_prompt("man waves", "r2v", config_for(server), images=[np.zeros((4, 4, 3), np.uint8)])
    assert result.enhanced and result.prompt == "The man from image0 waves."


def test_from_env_precedence() -> None:
    env = {
        "BERNINI_PE_BASE_URL": "http://pe.local/v1",
        "OPENAI_BASE_URL": "http://openai.local/v1",
        "BERNINI_PE_API_KEY": "pe-key",
        "OPENAI_API_KEY": "openai-key",
        "BERNINI_PE_MODEL": "env-model",
    }
    cfg = EnhancerConfig.from_env(None, env)
    assert (cfg.base_url, cfg.api_key, cfg.model) == ("http://pe.local/v1", "pe-key", "env-model")
    assert EnhancerConfig.from_env("cli-model", env).model == "cli-model"

    fallback = {"OPENAI_BASE_URL": "http://openai.local/v1", "OPENAI_API_KEY": "openai-key", "BERNINI_PE_API_KEY": ""}
    cfg = EnhancerConfig.from_env(None, fallback)
    assert (cfg.base_url, cfg.api_key, cfg.model) == ("http://openai.local/v1", "openai-key", DEFAULT_PE_MODEL)

    empty = EnhancerConfig.from_env(None, {})
    assert (empty.base_url, empty.api_key, empty.model) == (None, None, "gpt-5.4-2026-03-05")
    assert not enhancer_available(empty)
    assert enhancer_available(cfg)
    assert enhancer_available(EnhancerConfig(model="m", base_url="http://localhost:8000/v1"))
    assert cfg.timeout_s == 60.0 and cfg.max_attempts == 4 and cfg.budget_s == 180.0
    assert cfg.backoff_s == 1.0 and cfg.max_completion_tokens == 8192


def test_from_env_reads_only_the_mapping_it_is_given(monkeypatch: Any) -> None:
    monkeypatch.setenv("BERNINI_PE_MODEL", "from-os-environ")
    monkeypatch.setenv("BERNINI_PE_BASE_URL", "http://from-os-environ/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-os-environ")
    cfg = EnhancerConfig.from_env(None, {})
    assert (cfg.base_url, cfg.api_key, cfg.model) == (None, None, DEFAULT_PE_MODEL)
    given = EnhancerConfig.from_env(None, {"OPENAI_BASE_URL": "http://x/v1"})
    assert given.model == DEFAULT_PE_MODEL and given.base_url == "http://x/v1" and given.api_key is None
    with pytest.raises(TypeError):
        EnhancerConfig.from_env("m")  # type: ignore[call-arg]  # the mapping is required


def test_enhancer_package_never_reads_the_process_environment() -> None:
    """Only callers read the environment; the package's code never touches ``os.environ`` or ``getenv``."""
    import bernini.enhancer

    env_names = {"environ", "environb", "getenv", "getenvb"}
    sources = sorted(Path(bernini.enhancer.__file__).parent.glob("*.py"))
    assert len(sources) >= 5
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
            if isinstance(node, ast.Attribute):
                assert node.attr not in env_names, f"{source.name}:{node.lineno} reads the environment"
            elif isinstance(node, ast.Name):
                assert node.id not in env_names, f"{source.name}:{node.lineno} reads the environment"
            elif isinstance(node, ast.alias):
                assert node.name not in env_names, f"{source.name} imports {node.name}"


def test_config_validation() -> None:
    from bernini.errors import BerniniError

    with pytest.raises(BerniniError):
        EnhancerConfig(model="m", max_attempts=0)
    with pytest.raises(BerniniError):
        EnhancerConfig(model="m", budget_s=0)


def test_log_gets_progress_and_the_enhanced_prompt(server: ChatServer) -> None:
    server.push(error(500), text("Better prompt."))
    lines: list[str] = []
    result = enhance_prompt("a dog", "t2v", config_for(server, backoff_s=0.0), log=lines.append)
    assert result.enhanced
    assert any("retrying" in line for line in lines)
    assert "Better prompt." in lines[-1]


def test_case_with_prompt_copies() -> None:
    case = {"task_type": "rv2v", "prompt": "old", "video": ["a.mp4"], "images": ["r.jpg"], "output": "o.mp4"}
    new = case_with_prompt(case, "new prompt")
    assert new == {**case, "prompt": "new prompt"}
    assert list(new) == list(case)
    assert case["prompt"] == "old"
    new["images"].append("x.jpg")
    assert case["images"] == ["r.jpg"]
    assert json.loads(json.dumps(new))["prompt"] == "new prompt"


def test_timeout_and_budget_come_from_flags_else_environment_else_defaults():
    from bernini.errors import BerniniError

    assert (EnhancerConfig.from_env(None, {}).timeout_s, EnhancerConfig.from_env(None, {}).budget_s) == (60.0, 180.0)
    env = {"BERNINI_PE_TIMEOUT": "7.5", "BERNINI_PE_BUDGET": "20"}
    config = EnhancerConfig.from_env(None, env)
    assert (config.timeout_s, config.budget_s) == (7.5, 20.0)
    config = EnhancerConfig.from_env(None, env, timeout_s=2.0, budget_s=3.0)
    assert (config.timeout_s, config.budget_s) == (2.0, 3.0)
    with pytest.raises(BerniniError, match="BERNINI_PE_TIMEOUT must be a number of seconds"):
        EnhancerConfig.from_env(None, {"BERNINI_PE_TIMEOUT": "soon"})
    with pytest.raises(BerniniError, match="budget_s must be > 0"):
        EnhancerConfig.from_env(None, {"BERNINI_PE_BUDGET": "-1"})


def test_the_timeout_setting_bounds_a_slow_endpoint(server):
    server.push(delayed(3.0))
    config = EnhancerConfig(model="m", base_url=server.base_url, api_key=SECRET, timeout_s=0.3, max_attempts=1)
    started = time.monotonic()
    result = enhance_prompt("a fox", "t2v", config)
    assert not result.enhanced and "timeout" in result.warning and result.endpoint_failed
    assert time.monotonic() - started < 2.5


def test_a_reply_echoing_the_key_is_masked_before_it_is_returned_or_logged(server):
    server.push(text("Snowy forest.\nheader was: Authorization: {authorization}; key again " + SECRET))
    logged: list[str] = []
    config = EnhancerConfig(model="m", base_url=server.base_url, api_key=SECRET)
    result = enhance_prompt("a fox", "t2v", config, log=logged.append)
    assert result.enhanced and SECRET not in result.prompt and SECRET not in "".join(logged)
    assert result.prompt == "Snowy forest.\nheader was: Authorization: Bearer *** key again ***"
    assert "contained the API key" in result.warning
