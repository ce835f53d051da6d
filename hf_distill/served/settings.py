"""The served-teacher fields of `DistillationConfig` and `TraceConfig` (dataclass mixins, so this package owns its
own knobs): where the server is, how hard to push it, and, for log-probabilities, which engine answers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ENGINES = ("auto", "vllm", "llama_cpp")
AMBIGUOUS_TOKEN_POLICIES = ("error", "tail")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class ServedConnectionArguments:
    """Where a served teacher is and how it is asked (shared by traces, the logit cache and online KD)."""

    teacher_url: str | None = field(
        default=None,
        metadata={"help": "Base URL of an OpenAI-compatible server running the teacher (vLLM, SGLang, llama.cpp, "
                  "a hosted API), e.g. http://host:8000/v1, used instead of a teacher model loaded in this process."},
    )
    teacher_served_model: str | None = field(
        default=None,
        metadata={"help": "The model name the server knows the teacher by (its /v1/models id); default: the "
                  "server's only model."},
    )
    teacher_api_key_env: str = field(
        default="HF_DISTILL_TEACHER_API_KEY",
        metadata={"help": "NAME of the environment variable holding the server's API key (sent as a Bearer token "
                  "when set). The key itself is never a flag, never written to disk, never logged."},
    )
    teacher_concurrency: int = field(
        default=8, metadata={"help": "Requests in flight to the served teacher at most."}
    )
    teacher_max_retries: int = field(
        default=5, metadata={"help": "Retries of a request after a timeout, a dropped connection, 429 or 5xx, with "
                             "exponential backoff (Retry-After honoured)."}
    )
    teacher_timeout: float = field(default=300.0, metadata={"help": "Seconds to wait for one reply."})

    def check_served_connection(self) -> None:
        if self.teacher_served_model is not None and self.teacher_url is None:
            raise ValueError("teacher_served_model names a model on a server: set teacher_url too, or drop it.")
        if not _ENV_NAME.fullmatch(self.teacher_api_key_env or ""):
            raise ValueError(
                "teacher_api_key_env is the NAME of an environment variable (e.g. OPENAI_API_KEY), not a key: got a "
                "value that is not a variable name. Fix: `export MY_KEY=...` and pass teacher_api_key_env=MY_KEY."
            )
        for name, low in (("teacher_concurrency", 1), ("teacher_max_retries", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if not self.teacher_timeout > 0:
            raise ValueError(f"teacher_timeout must be > 0 seconds, got {self.teacher_timeout}")

    def served_client(self):
        """A :class:`~hf_distill.served.client.ServedClient` for ``teacher_url``."""
        from hf_distill.served.client import ServedClient

        return ServedClient(self.teacher_url, concurrency=self.teacher_concurrency,
                            max_retries=self.teacher_max_retries, timeout=self.teacher_timeout,
                            api_key_env=self.teacher_api_key_env)


@dataclass
class ServedTeacherArguments(ServedConnectionArguments):
    """A served teacher scoring tokens (logit cache, online KD): its prompt log-probabilities."""

    teacher_engine: str = field(
        default="auto",
        metadata={"help": "Which engine serves the log-probabilities: 'vllm' (token ids in and out), 'llama_cpp' "
                  "(token strings, mapped back to ids), or 'auto' (asked from /v1/models).",
                  "choices": list(ENGINES)},
    )
    teacher_top_k: int = field(
        default=20,
        metadata={"help": "Online KD from a served teacher: top-k log-probabilities asked per token (vLLM caps them "
                  "at its --max-logprobs, 20 by default)."},
    )
    teacher_ambiguous_tokens: str = field(
        default="error",
        metadata={"help": "Engines that name tokens by their text (llama.cpp) render several tokens the same way "
                  "(special tokens and partial UTF-8 bytes as ''): 'error' refuses such a top-k entry, 'tail' counts "
                  "its probability in the rest bucket.", "choices": list(AMBIGUOUS_TOKEN_POLICIES)},
    )

    def check_served_teacher_settings(self) -> None:
        self.check_served_connection()
        if self.teacher_engine not in ENGINES:
            raise ValueError(f"teacher_engine must be one of {ENGINES}, got {self.teacher_engine!r}")
        if self.teacher_ambiguous_tokens not in AMBIGUOUS_TOKEN_POLICIES:
            raise ValueError(f"teacher_ambiguous_tokens must be one of {AMBIGUOUS_TOKEN_POLICIES}, got "
                             f"{self.teacher_ambiguous_tokens!r}")
        if self.teacher_top_k < 1:
            raise ValueError(f"teacher_top_k must be >= 1, got {self.teacher_top_k}")
