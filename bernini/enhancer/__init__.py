"""Prompt enhancer (``--use_pe``): rewrite a user prompt with an OpenAI-compatible chat model.

Bernini-R was trained on long, explicit prompts (an edit instruction plus a description of the
target, including what stays unchanged). Short user prompts work noticeably worse, so the
upstream project recommends rewriting them with a vision-language model first. This package does
that through the official ``openai`` SDK against any chat-completions endpoint.

Design rules:

* Configuration is an explicit :class:`EnhancerConfig`; the library never reads the process
  environment (:meth:`EnhancerConfig.from_env` reads the mapping its caller passes).
* The enhancer never loses a generation: every failure (network, HTTP error, malformed reply,
  unreadable media, even a bug in here) returns the raw prompt with a one-line warning.
* The API key never leaves the HTTP ``Authorization`` header: it is hidden from ``repr`` and
  scrubbed from every message built from an exception or a server reply.
* The library prints nothing; progress goes to an optional ``log`` callable.

Modules: :mod:`.templates` (what the model is told per task), :mod:`.media` (images and video
frames as data URIs), :mod:`.client` (the request, retries, errors, reply parsing) and
:mod:`.config`; this module ties them together in :func:`enhance_prompt`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .client import (
    RewriteCall,
    RewriteFailed,
    build_request,
    close_quietly,
    mask_secret,
    open_client,
    parse_rewritten_text,
    scrub,
    shorten,
)
from .config import DEFAULT_PE_MODEL, EnhancerConfig, enhancer_available
from .media import ImageLike, MediaProblem, build_messages, collect_media
from .templates import JSON_TASKS, TEMPLATES, Template

__all__ = [
    "DEFAULT_PE_MODEL",
    "JSON_TASKS",
    "TEMPLATES",
    "EnhanceResult",
    "EnhancerConfig",
    "ImageLike",
    "Template",
    "case_with_prompt",
    "enhance_prompt",
    "enhancer_available",
    "parse_rewritten_text",
]


@dataclass(frozen=True)
class EnhanceResult:
    """The prompt to use, and how it was obtained.

    ``prompt`` is the rewritten prompt when ``enhanced`` is true, else the original one; ``warning``
    is one line explaining a fallback (None on success or when there was nothing to do).
    """

    prompt: str
    original: str
    enhanced: bool
    model: str
    warning: str | None
    attempts: int
    seconds: float
    endpoint_failed: bool = False


def case_with_prompt(case: Mapping[str, Any], prompt: str) -> dict[str, Any]:
    """A copy of a case-file dict with its prompt replaced (for ``--pe_only`` review output)."""
    out = copy.deepcopy(dict(case))
    out["prompt"] = prompt
    return out


def enhance_prompt(
    prompt: str,
    task_type: str,
    config: EnhancerConfig,
    *,
    videos: Sequence[np.ndarray] = (),
    image: ImageLike | None = None,
    images: Sequence[ImageLike] = (),
    client_factory: Callable[..., Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] | None = None,
) -> EnhanceResult:
    """Rewrite ``prompt`` for ``task_type`` with the configured chat model; never raises on failure.

    ``videos`` are decoded uint8 ``[T,H,W,3]`` arrays (3 frames of each are sent); ``image`` and
    ``images`` are paths, PIL images or HxWx3 uint8 arrays. ``client_factory`` builds the SDK client
    from keyword arguments ``api_key``, ``base_url``, ``timeout`` and ``max_retries`` (default
    ``openai.OpenAI`` reading at most :data:`~.client.MAX_REPLY_BYTES` of a reply; a factory of your own
    sets its own bound); ``sleep`` and ``clock`` are injectable for tests. On any failure the result
    holds the original prompt, ``enhanced=False`` and a one-line ``warning``. ``log`` receives
    progress lines (retries, the enhanced prompt) but not the warning, which the caller shows.
    """
    start = clock()
    secret = config.api_key
    call: RewriteCall | None = None  # set once the client exists; counts the requests sent

    def emit(message: str) -> None:
        if log is not None:
            log(scrub(message, secret))

    def done(text: str, enhanced: bool, warning: str | None, endpoint_failed: bool = False) -> EnhanceResult:
        if warning is not None:  # returned, not logged: the caller decides how to show it
            warning = scrub(warning, secret)
        return EnhanceResult(
            prompt=text,
            original=prompt,
            enhanced=enhanced,
            model=config.model,
            warning=warning,
            attempts=call.attempts if call is not None else 0,
            seconds=max(0.0, clock() - start),
            endpoint_failed=endpoint_failed,
        )

    def fallback(reason: str, endpoint_failed: bool = False) -> EnhanceResult:
        warning = f"prompt enhancer failed ({scrub(reason, secret)}); using the original prompt"
        return done(prompt, False, warning, endpoint_failed)

    if not prompt or not prompt.strip():
        return done(prompt, False, None)
    template = TEMPLATES.get(task_type)
    if template is None:
        return done(
            prompt,
            False,
            f"prompt enhancer has no template for task_type {task_type!r} "
            f"(known: {', '.join(TEMPLATES)}); using the original prompt",
        )

    client = None
    try:
        try:
            uris, legend, ignored = collect_media(template, videos, image, images)
        except MediaProblem as exc:
            return fallback(str(exc))
        if ignored:
            emit(f"prompt enhancer: the {task_type} template does not use {' and '.join(ignored)}; not sending")
        messages = build_messages(template, prompt, uris, legend)
        request = build_request(config, messages, template.json_output)
        client = open_client(config, client_factory)
        emit(f"prompt enhancer: asking {config.model} to rewrite the {task_type} prompt ({len(uris)} image(s))")

        call = RewriteCall(
            client=client,
            request=request,
            json_output=template.json_output,
            config=config,
            start=start,
            sleep=sleep,
            clock=clock,
            emit=emit,
        )
        try:
            text = call.run()
        except RewriteFailed as exc:
            return fallback(str(exc), exc.endpoint)
        masked = mask_secret(text, secret)  # an endpoint that echoes the Authorization header
        warning = None if masked == text else "the enhancer's reply contained the API key; it was masked"
        text = masked
        result = done(text, True, warning)
        emit(
            f"prompt enhancer: {config.model} rewrote the prompt in {result.seconds:.1f} s "
            f"({call.attempts} attempt{'s' if call.attempts != 1 else ''}): {text}"
        )
        return result
    except Exception as exc:  # a bug here must not cost the user their generation
        return fallback(shorten(f"internal error: {type(exc).__name__}: {exc}"))
    finally:
        close_quietly(client)
