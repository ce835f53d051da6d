"""`DistillationConfig`: TRL's `SFTConfig` plus the knobs of distillation, and nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments
from trl import SFTConfig

from hf_distill.losses import LossSpec
from hf_distill.losses.divergences import DIVERGENCES


@dataclass
class DistillationConfig(SFTConfig):
    """Configuration for :class:`~hf_distill.DistillationTrainer`.

    Everything from `SFTConfig`/`TrainingArguments` works as usual; the fields below only describe the teacher and
    the loss ``(alpha * CE + (1 - alpha) * T**2 * divergence(teacher || student)) / num_loss_tokens``.
    Works with `HfArgumentParser` (command line, JSON, YAML) like any TrainingArguments subclass.
    """

    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Teacher checkpoint (local directory or hub id), used when `teacher_model=` is not passed."},
    )
    teacher_cache: str | None = field(
        default=None,
        metadata={
            "help": "Directory of a teacher-logit cache written by `hf-distill cache-logits`, used instead of a live "
            "teacher (top-k log-probabilities + tail mass; `temperature` must be the one it was collected at)."
        },
    )
    teacher_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Extra keyword arguments for the teacher's `from_pretrained` (e.g. quantization, revision)."},
    )
    teacher_dtype: str | None = field(
        default=None,
        metadata={
            "help": "dtype to run the teacher in: 'auto' (as saved), 'float32', 'bfloat16' or 'float16'. "
            "Default: as saved for a path, unchanged for a model object. bfloat16 halves its memory."
        },
    )
    teacher_device: str | None = field(
        default=None,
        metadata={"help": "Device for the teacher (e.g. 'cuda:1'); default: the student's device."},
    )
    kd_loss: str = field(
        default="forward_kl",
        metadata={
            "help": "Divergence between teacher and student next-token distributions.",
            "choices": sorted(DIVERGENCES),
        },
    )
    temperature: float = field(
        default=1.0,
        metadata={
            "help": "Softmax temperature T for both distributions in the KD term (> 0). The KD term is multiplied by "
            "T**2 so its gradient scale does not depend on T. The hard-label CE always uses T = 1."
        },
    )
    alpha: float = field(
        default=0.5,
        metadata={"help": "Weight of the hard-label cross-entropy in [0, 1]; the KD term gets 1 - alpha."},
    )
    beta: float = field(
        default=0.5,
        metadata={
            "help": "Mixture weight in [0, 1] for 'jsd' (TRL GKD semantics: 0 = forward KL, 1 = reverse KL) and the "
            "skew share for 'skew_forward_kl'/'skew_reverse_kl' (DistiLLM uses 0.1). Ignored by other losses."
        },
    )
    kd_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per chunk of the KD loss; its extra memory is about 4 x chunk x vocab floats. "
            "Default: chosen so that chunk x vocab is about 32M (1024 tokens at a 32k vocabulary); 4M with a "
            "`teacher_cache` (128 tokens at 32k), which measured fastest for the sparse loss on CPU."
        },
    )

    def __post_init__(self):
        # TRL turns bf16 on by default, which TrainingArguments rejects on a machine with no accelerator unless
        # `use_cpu` is set. Keep TRL's default where it can run, fall back to fp32 elsewhere.
        if self.bf16 is None and not self.fp16 and not self.use_cpu and not _has_bf16_accelerator():
            self.bf16 = False
        super().__post_init__()
        LossSpec(self.kd_loss, self.temperature, self.alpha, self.beta, self.kd_chunk_size)  # validates ranges

    def loss_spec(self, vocab_size: int, sparse: bool = False) -> LossSpec:
        chunk = self.kd_chunk_size or max(64, (2**22 if sparse else 2**25) // max(vocab_size, 1))
        return LossSpec(self.kd_loss, self.temperature, self.alpha, self.beta, chunk)

    @classmethod
    def from_training_args(cls, args: TrainingArguments | None, default_output_dir: str) -> "DistillationConfig":
        """Accept plain `TrainingArguments` or `SFTConfig` (distillation defaults apply), as `SFTTrainer` does."""
        if args is None:
            return cls(output_dir=default_output_dir)
        if isinstance(args, cls):
            return args
        values = args.to_dict()
        values["hub_token"] = args.hub_token  # to_dict hides it
        return cls(**values)


def _has_bf16_accelerator() -> bool:
    return (torch.cuda.is_available() and torch.cuda.is_bf16_supported()) or (
        hasattr(torch, "xpu") and torch.xpu.is_available()
    )
