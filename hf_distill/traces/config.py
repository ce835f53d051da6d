"""`TraceConfig`: how reasoning traces are sampled from a teacher and which of them are kept."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from hf_distill.served.settings import ServedConnectionArguments
from hf_distill.traces.templates import get_template

ENDPOINTS = ("chat", "completions")


@dataclass
class TraceConfig(ServedConnectionArguments):
    """Settings of :func:`~hf_distill.traces.collect_traces` (and of ``hf-distill traces``, via `HfArgumentParser`).

    The sampling fields (template, num_samples, temperature, top_p, max_new_tokens, batch_size, seed, shard_size)
    decide the samples and are recorded in the output's manifest: a resumed run must use the same ones.
    ``keep_only_verified``, ``verify_arithmetic`` and ``dedupe`` only filter the final dataset and may change
    between runs.

    With ``teacher_url`` the teacher is a server (:mod:`hf_distill.served`): each problem is one request for
    ``num_samples`` choices (``n``; separate requests where the engine returns fewer), ``teacher_concurrency`` of
    them in flight. The connection fields (url, key variable, concurrency, retries, timeout) may change between runs.
    """

    template: str = field(
        default="default",
        metadata={"help": "Teacher prompt: 'default' (the bare question, the format a model fine-tuned on questions "
                          "answers), 'step_by_step' or 'think' (instructions for instruct models), or a text holding "
                          "'{question}'."},
    )
    num_samples: int = field(default=4, metadata={"help": "Traces sampled per problem."})
    temperature: float = field(
        default=0.7, metadata={"help": "Sampling temperature; 0 is greedy decoding (then num_samples must be 1)."}
    )
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling: keep the smallest token set of this mass."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest trace generated, in tokens."})
    batch_size: int = field(
        default=16, metadata={"help": "Problems per generate call (each yields num_samples sequences)."}
    )
    keep_only_verified: bool = field(
        default=True,
        metadata={"help": "Keep only traces whose final answer equals the gold one (rejection sampling)."},
    )
    verify_arithmetic: bool = field(
        default=True,
        metadata={"help": "Verified also requires every equation of the trace to be right: a trace can reach the "
                          "gold answer through a slip such as '28/3 = 9'."},
    )
    dedupe: bool = field(default=True, metadata={"help": "Drop repeated traces of the same problem."})
    seed: int = field(default=0, metadata={"help": "Seed; shard i samples with seed + i, so a resumed run is "
                                                   "identical to an uninterrupted one."})
    shard_size: int = field(default=256, metadata={"help": "Problems per shard file: the unit of resuming."})
    device: str | None = field(
        default=None, metadata={"help": "Device for the teacher (default: cuda if available, else where it is)."}
    )
    teacher_endpoint: str = field(
        default="chat",
        metadata={"help": "With teacher_url: 'chat' (/v1/chat/completions, the server applies the model's chat "
                  "template) or 'completions' (/v1/completions with the plain-text prompt, for a base model).",
                  "choices": list(ENDPOINTS)},
    )

    def __post_init__(self):
        self.check_served_connection()
        if self.teacher_endpoint not in ENDPOINTS:
            raise ValueError(f"TraceConfig.teacher_endpoint must be one of {ENDPOINTS}, got {self.teacher_endpoint!r}")
        get_template(self.template)  # unknown names fail here, with the list of templates
        for name in ("num_samples", "max_new_tokens", "batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TraceConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"TraceConfig.temperature must be >= 0, got {self.temperature}")
        if self.temperature == 0 and self.num_samples > 1:
            raise ValueError("temperature=0 is greedy decoding, so every sample of a problem would be the same: "
                             "set num_samples=1 or a temperature > 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"TraceConfig.top_p must be in (0, 1], got {self.top_p}")

    def sampling_fields(self) -> dict:
        """What decides the samples (recorded in the manifest; a resumed run must match it)."""
        template = get_template(self.template)
        values = asdict(self)
        for name in ("keep_only_verified", "verify_arithmetic", "dedupe", "device", *_CONNECTION_FIELDS):
            values.pop(name)
        if self.teacher_url is None:
            values.pop("teacher_endpoint")  # a model in this process: its chat template decides
        values["template"] = {"name": template.name, "system": template.system, "user": template.user}
        return values

    def generation_kwargs(self) -> dict:
        if self.temperature == 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p,
                "num_return_sequences": self.num_samples}


_CONNECTION_FIELDS = ("teacher_url", "teacher_served_model", "teacher_api_key_env", "teacher_concurrency",
                      "teacher_max_retries", "teacher_timeout")
"""How to reach the server, not what it samples: free to change when a run is resumed (the served model's name is
recorded as the teacher)."""
