"""Where and how to call the enhancer model: :class:`EnhancerConfig`.

The library never reads the process environment: :meth:`EnhancerConfig.from_env` reads the
mapping its caller passes (front ends pass ``os.environ``), so tests and embedding applications
decide what the enhancer sees.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import BerniniError

__all__ = ["DEFAULT_PE_MODEL", "EnhancerConfig", "enhancer_available"]

DEFAULT_PE_MODEL = "gpt-5.4-2026-03-05"
"""The upstream default enhancer model."""


@dataclass(frozen=True)
class EnhancerConfig:
    """Where and how to call the enhancer model.

    ``base_url`` None means the public OpenAI endpoint; ``api_key`` None sends a placeholder key,
    which local OpenAI-compatible servers accept.
    """

    model: str = DEFAULT_PE_MODEL
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    max_attempts: int = 4
    budget_s: float = 180.0
    backoff_s: float = 1.0
    max_completion_tokens: int = 8192

    def __post_init__(self) -> None:
        if not self.model or not str(self.model).strip():
            raise BerniniError("prompt enhancer model name is empty; pass --pe_model or set BERNINI_PE_MODEL")
        if self.max_attempts < 1:
            raise BerniniError(f"prompt enhancer max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("timeout_s", "budget_s"):
            if not 0 < getattr(self, name) < float("inf"):
                raise BerniniError(f"prompt enhancer {name} must be > 0, got {getattr(self, name)}")
        if self.backoff_s < 0:
            raise BerniniError(f"prompt enhancer backoff_s must be >= 0, got {self.backoff_s}")
        if self.max_completion_tokens < 1:
            raise BerniniError(f"prompt enhancer max_completion_tokens must be >= 1, got {self.max_completion_tokens}")

    def __repr__(self) -> str:
        key = "'***'" if self.api_key else "None"
        return (
            f"EnhancerConfig(model={self.model!r}, base_url={safe_url(self.base_url)!r}, api_key={key}, "
            f"timeout_s={self.timeout_s}, max_attempts={self.max_attempts}, budget_s={self.budget_s}, "
            f"backoff_s={self.backoff_s}, max_completion_tokens={self.max_completion_tokens})"
        )

    @classmethod
    def from_env(
        cls,
        pe_model: str | None,
        env: Mapping[str, str],
        timeout_s: float | None = None,
        budget_s: float | None = None,
    ) -> EnhancerConfig:
        """Build a config from ``--pe_model`` and an environment mapping (``os.environ`` in a front end).

        Base URL: ``BERNINI_PE_BASE_URL``, else ``OPENAI_BASE_URL``. Key: ``BERNINI_PE_API_KEY``, else
        ``OPENAI_API_KEY``. Model: ``pe_model``, else ``BERNINI_PE_MODEL``, else :data:`DEFAULT_PE_MODEL`.
        Seconds per request and for all attempts of one prompt: ``timeout_s`` / ``budget_s`` (the flags),
        else ``BERNINI_PE_TIMEOUT`` / ``BERNINI_PE_BUDGET``, else 60 / 180. Empty values count as unset.
        """

        def first_set(*values: str | None) -> str | None:
            for value in values:
                if value is not None and value.strip():
                    return value.strip()
            return None

        def seconds(flag: float | None, name: str, default: float) -> float:
            if flag is not None:
                return flag
            value = first_set(env.get(name))
            if value is None:
                return default
            try:
                return float(value)
            except ValueError:
                raise BerniniError(f"{name} must be a number of seconds, got {value!r}") from None

        return cls(
            model=first_set(pe_model, env.get("BERNINI_PE_MODEL")) or DEFAULT_PE_MODEL,
            base_url=first_set(env.get("BERNINI_PE_BASE_URL"), env.get("OPENAI_BASE_URL")),
            api_key=first_set(env.get("BERNINI_PE_API_KEY"), env.get("OPENAI_API_KEY")),
            timeout_s=seconds(timeout_s, "BERNINI_PE_TIMEOUT", cls.timeout_s),
            budget_s=seconds(budget_s, "BERNINI_PE_BUDGET", cls.budget_s),
        )


def enhancer_available(config: EnhancerConfig) -> bool:
    """Whether an endpoint is configured at all (a base URL or an API key)."""
    return bool(config.base_url or config.api_key)


def safe_url(url: str | None) -> str | None:
    """The URL without user info or query string, which may carry credentials."""
    if not url:
        return url
    url = re.sub(r"^([a-zA-Z][\w+.-]*://)[^/@]*@", r"\1", url)
    return url.split("?", 1)[0]
