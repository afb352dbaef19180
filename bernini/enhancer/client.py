"""The HTTP side of the enhancer: the chat-completions request, its retries, and reading the reply.

Retry policy: rate limits (429), 408/409, server errors (5xx), timeouts and connection errors
are retried with exponential backoff (``backoff_s * 2**k``, capped at 30 s, or the server's
``Retry-After`` if longer) for at most ``max_attempts`` requests and never past ``budget_s``.
A reply that is empty or lacks a usable ``rewritten_text`` is retried **once**, immediately:
sampling is random and a second draw usually succeeds, while further retries mostly burn time.
Other HTTP errors (400/401/403/404/422 …) fall back at once.

The wall-time bound relies on the SDK's per-request timeout, which httpx applies to each network
operation (connect, each read, write); a server trickling bytes could exceed it, which no
OpenAI-compatible server does in practice. The size of a reply is bounded (:data:`MAX_REPLY_BYTES`, after
decompression): the SDK would otherwise read whatever the server sends into memory. A larger reply is a failed
rewrite, not retried.

The API key never leaves the HTTP ``Authorization`` header: :func:`scrub` masks it in every
message built from an exception or a server reply, and :func:`safe_url` drops credentials from
URLs shown to the user.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import EnhancerConfig, safe_url

__all__ = [
    "MAX_REPLY_BYTES",
    "ReplyTooLarge",
    "RewriteCall",
    "RewriteFailed",
    "build_request",
    "close_quietly",
    "mask_secret",
    "open_client",
    "parse_rewritten_text",
    "safe_url",
    "scrub",
    "shorten",
]

_DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Sent when no key is configured, e.g. for a local vLLM/Ollama server; the SDK refuses no key at all.
_NO_KEY_PLACEHOLDER = "EMPTY"
_MAX_BACKOFF_S = 30.0
# Do not start a request with less time than this left in the budget.
_MIN_ATTEMPT_S = 0.05
_RETRYABLE_STATUS = frozenset({408, 409, 429})
_MAX_DETAIL_CHARS = 160
MAX_REPLY_BYTES = 1 << 20
"""The most bytes of one HTTP reply read. A chat completion of the default 8192 tokens, even with every character
``\\u``-escaped, stays far below it."""


# ----------------------------------------------------------------------------------------------
# Reply parsing

_THINK_RE = re.compile(r"<think(?:ing)?>.*?</think(?:ing)?>", re.DOTALL | re.IGNORECASE)
_FENCE_RE = re.compile(r"^```[\w+-]*[ \t]*\n?(.*?)\n?```$", re.DOTALL)
_QUOTE_PAIRS = (('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("\u00ab", "\u00bb"))


def _strip_reasoning(text: str) -> str:
    """Drop ``<think>…</think>`` blocks that some open reasoning models put in the content."""
    return _THINK_RE.sub("", text)


def parse_rewritten_text(reply: str) -> str | None:
    """The ``rewritten_text`` of the first JSON object in ``reply`` that has a non-empty one.

    Tolerates code fences and prose around the object, and objects nested inside others.
    Returns None when there is no such object.
    """
    text = _strip_reasoning(reply)
    decoder = json.JSONDecoder()
    position = text.find("{")
    while position != -1:
        try:
            candidate, _ = decoder.raw_decode(text, position)
        except ValueError:
            candidate = None
        if isinstance(candidate, dict):
            value = candidate.get("rewritten_text")
            if isinstance(value, str) and value.strip():
                return value.strip()
        position = text.find("{", position + 1)
    return None


def _clean_text_reply(reply: str) -> str:
    """A plain-text reply without reasoning blocks, code fences or surrounding quotes."""
    text = _strip_reasoning(reply).strip()
    match = _FENCE_RE.match(text)
    if match:
        text = match.group(1).strip()
    # Some models answer plain-text templates in JSON anyway; accept that.
    if text.startswith("{"):
        parsed = parse_rewritten_text(text)
        if parsed:
            return parsed
    for left, right in _QUOTE_PAIRS:
        if len(text) >= 2 and text.startswith(left) and text.endswith(right) and left not in text[1:-1]:
            text = text[1:-1].strip()
            break
    return text


class _ReplyProblem(Exception):
    """A reply that arrived but cannot be used (empty, refused, malformed)."""


def _reply_text(response: Any) -> tuple[str, str | None]:
    """The message content and finish reason of a chat.completion, tolerating odd servers."""
    choices = getattr(response, "choices", None) or []
    if not choices:
        raise _ReplyProblem("reply has no choices")
    choice = choices[0]
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None)
    if isinstance(content, list):  # some servers return content parts
        content = "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    if not content:
        refusal = getattr(message, "refusal", None)
        if refusal:
            raise _ReplyProblem(f"model refused: {refusal}")
    return (content or ""), getattr(choice, "finish_reason", None)


def _extract_prompt(response: Any, json_output: bool) -> str:
    content, finish = _reply_text(response)
    if not content.strip():
        suffix = f" (finish_reason={finish})" if finish and finish != "stop" else ""
        raise _ReplyProblem(f"empty reply{suffix}")
    if json_output:
        text = parse_rewritten_text(content)
        if text is None:
            raise _ReplyProblem("malformed JSON reply (no rewritten_text)")
    else:
        text = _clean_text_reply(content)
        if not text:
            raise _ReplyProblem("empty reply")
    return text


# ----------------------------------------------------------------------------------------------
# Secrets and error classification


def scrub(text: str, secret: str | None) -> str:
    """One line of ``text`` with the secret (and anything that looks like a piece of it) masked."""
    text = " ".join(str(text).split())
    if secret:
        text = text.replace(secret, "***")
        if len(secret) >= 8:
            # Servers often echo a partly masked key ("sk-ab***wxyz"): drop words sharing 6+ chars with it.
            pieces = {secret[start : start + 6] for start in range(len(secret) - 5)}
            words = text.split(" ")
            text = " ".join("***" if any(piece in word for piece in pieces) else word for word in words)
    text = re.sub(r"(?i)\b(bearer)\s+\S+", r"\1 ***", text)
    text = re.sub(r"\bsk-[A-Za-z0-9_*.\-]{3,}", "sk-***", text)
    return text


def mask_secret(text: str, secret: str | None) -> str:
    """``text`` (a reply that will be stored and shown) with the secret, any word sharing 6+ characters with it
    and any ``Bearer`` token masked; its whitespace is kept."""
    if secret:
        text = text.replace(secret, "***")
        if len(secret) >= 8:
            pieces = {secret[start : start + 6] for start in range(len(secret) - 5)}
            text = re.sub(r"\S+", lambda m: "***" if any(p in m.group() for p in pieces) else m.group(), text)
    return re.sub(r"(?i)\b(bearer)\s+\S+", r"\1 ***", text)


def shorten(text: str, limit: int = _MAX_DETAIL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


@dataclass
class _Failure:
    """What went wrong with one request, and whether another attempt may help."""

    reason: str
    retryable: bool
    retry_after: float | None = None


def _retry_after(exc: Any) -> float | None:
    """The server's Retry-After hint in seconds, when it gives a plain number."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms") is not None:
            return max(0.0, float(headers["retry-after-ms"]) / 1000.0)
        if headers.get("retry-after") is not None:
            return max(0.0, float(headers["retry-after"]))
    except (TypeError, ValueError):
        return None
    return None


def _error_detail(exc: Any) -> str:
    """The server's own error message, if the body carries one."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(inner, str):
            return inner
    return ""


def _classify_error(exc: BaseException, base_url: str) -> _Failure:
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return _Failure("timeout", True)
    if isinstance(exc, openai.APIConnectionError):
        return _Failure(f"cannot connect to {safe_url(base_url)}", True)
    if isinstance(exc, openai.APIStatusError):
        status = int(exc.status_code)
        retryable = status in _RETRYABLE_STATUS or status >= 500
        reason = f"HTTP {status}"
        if not retryable:
            detail = _error_detail(exc)
            if detail:
                reason += f": {shorten(detail)}"
        return _Failure(reason, retryable, _retry_after(exc) if retryable else None)
    return _Failure(shorten(f"{type(exc).__name__}: {exc}"), False)


# ----------------------------------------------------------------------------------------------
# Bounded replies


class ReplyTooLarge(Exception):
    """The server sent (or announced) more than :data:`MAX_REPLY_BYTES`; the rest is not read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"reply larger than {limit / 2**20:g} MiB")


def _read_at_most(response: Any, limit: int) -> bytes:
    """The decoded body of a streamed ``response``, raising :class:`ReplyTooLarge` once it passes ``limit``."""
    announced = response.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > limit and not response.headers.get("content-encoding"):
        raise ReplyTooLarge(limit)
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > limit:
            raise ReplyTooLarge(limit)
    return bytes(body)


def _too_large(exc: BaseException) -> ReplyTooLarge | None:
    """The :class:`ReplyTooLarge` behind ``exc``: newer SDKs pass it through, older ones wrap it in a connection
    error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ReplyTooLarge):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@functools.cache
def _bounded_http_client_class() -> type:
    """The SDK's default HTTP client, reading at most :data:`MAX_REPLY_BYTES` of each reply (built on first use:
    importing the SDK is slow, and only ``--use_pe`` needs it)."""
    import openai

    class BoundedHttpClient(openai.DefaultHttpxClient):
        def send(self, request: Any, *, stream: bool = False, **kwargs: Any) -> Any:
            response = super().send(request, stream=True, **kwargs)
            if stream:  # the caller reads the body itself (not used by the enhancer)
                return response
            try:
                body = _read_at_most(response, MAX_REPLY_BYTES)
            finally:
                response.close()
            unread = ("content-encoding", "content-length", "transfer-encoding")  # the body is decoded and whole
            headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in unread]
            return type(response)(
                response.status_code,
                headers=headers,
                content=body,
                request=request,
                extensions=response.extensions,
            )

    return BoundedHttpClient


# ----------------------------------------------------------------------------------------------
# The request and its retry loop


def _default_client_factory(**kwargs: Any) -> Any:
    import openai

    return openai.OpenAI(**kwargs, http_client=_bounded_http_client_class()())


def _endpoint(config: EnhancerConfig) -> str:
    return config.base_url or _DEFAULT_BASE_URL


def build_request(config: EnhancerConfig, messages: list[dict[str, Any]], json_output: bool) -> dict[str, Any]:
    """The keyword arguments of ``chat.completions.create``, less the per-attempt timeout."""
    request: dict[str, Any] = {
        "model": config.model,
        "messages": messages,
        "max_completion_tokens": config.max_completion_tokens,
    }
    if json_output:
        request["response_format"] = {"type": "json_object"}
    return request


def open_client(config: EnhancerConfig, client_factory: Callable[..., Any] | None) -> Any:
    """An SDK client for the configured endpoint; the SDK's own retries are off (the loop retries)."""
    factory = client_factory or _default_client_factory
    return factory(
        api_key=config.api_key or _NO_KEY_PLACEHOLDER,
        base_url=_endpoint(config),
        timeout=config.timeout_s,
        max_retries=0,
    )


def close_quietly(client: Any) -> None:
    """Close the client if it can be closed; closing is best effort."""
    close = getattr(client, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            pass


class RewriteFailed(Exception):
    """The retry loop gave up; the message is the one-line reason for the fallback warning.

    ``endpoint`` is true when the endpoint itself failed (network, timeout, HTTP error), not one reply.
    """

    def __init__(self, message: str, endpoint: bool = True) -> None:
        super().__init__(message)
        self.endpoint = endpoint


def _with_attempts(reason: str, attempts: int) -> str:
    """The failure reason, with the number of requests when there was more than one."""
    return reason if attempts <= 1 else f"{reason} after {attempts} attempts"


@dataclass
class RewriteCall:
    """One rewrite request, sent until it succeeds or the retry policy gives up.

    ``attempts`` counts the requests sent so far; it is a field rather than a return value so that
    the caller can report it even when something unexpected interrupts the loop. ``start`` is the
    ``clock`` reading the time budget counts from.
    """

    client: Any
    request: dict[str, Any]
    json_output: bool
    config: EnhancerConfig
    start: float
    sleep: Callable[[float], None]
    clock: Callable[[], float]
    emit: Callable[[str], None]
    attempts: int = 0

    def run(self) -> str:
        """The rewritten prompt; raises :class:`RewriteFailed` when the loop gives up."""
        config = self.config
        budget_note = f", stopped by the {config.budget_s:g} s time budget"
        backoff_index = 0
        reply_retry_used = False
        last_reason = ""
        while True:
            remaining = config.budget_s - (self.clock() - self.start)
            if remaining < _MIN_ATTEMPT_S:
                raise RewriteFailed(_with_attempts(last_reason or "no time left", self.attempts) + budget_note)
            self.attempts += 1
            try:
                response = self.client.chat.completions.create(**self.request, timeout=min(config.timeout_s, remaining))
                return _extract_prompt(response, self.json_output)
            except _ReplyProblem as exc:
                last_reason = str(exc)
                if reply_retry_used or self.attempts >= config.max_attempts:
                    raise RewriteFailed(_with_attempts(last_reason, self.attempts), endpoint=False) from None
                reply_retry_used = True
                self.emit(f"prompt enhancer: attempt {self.attempts} failed ({last_reason}); retrying once")
                continue
            except Exception as exc:  # every SDK/network failure must fall back
                too_large = _too_large(exc)
                if too_large is not None:  # one bad reply, not a failed endpoint; another draw is as long
                    raise RewriteFailed(_with_attempts(str(too_large), self.attempts), endpoint=False) from None
                failure = _classify_error(exc, _endpoint(config))
                last_reason = failure.reason
                if not failure.retryable or self.attempts >= config.max_attempts:
                    raise RewriteFailed(_with_attempts(last_reason, self.attempts)) from None
                delay = min(config.backoff_s * 2**backoff_index, _MAX_BACKOFF_S)
                if failure.retry_after is not None:
                    delay = min(max(delay, failure.retry_after), _MAX_BACKOFF_S)
                backoff_index += 1
                if self.clock() - self.start + delay + _MIN_ATTEMPT_S > config.budget_s:
                    raise RewriteFailed(_with_attempts(last_reason, self.attempts) + budget_note) from None
                self.emit(f"prompt enhancer: attempt {self.attempts} failed ({last_reason}); retrying in {delay:g} s")
                self.sleep(delay)
                continue
