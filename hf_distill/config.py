"""`DistillationConfig`: TRL's `SFTConfig` plus the knobs of distillation, and nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments
from trl import SFTConfig

from hf_distill.cross_tokenizer.settings import CrossTokenizerArguments
from hf_distill.features.settings import check_feature_settings
from hf_distill.losses import LossSpec
from hf_distill.losses.chunked import (
    default_chunk_size as default_kd_chunk_size,  # the name cascade.plan imports
)
from hf_distill.losses.divergences import DIVERGENCES
from hf_distill.models.quantization import QUANTIZATION_MODES
from hf_distill.objectives.codistill import check_codistill_settings
from hf_distill.on_policy.settings import OnPolicyArguments
from hf_distill.served.settings import ServedTeacherArguments
from hf_distill.training.fsdp import check_fully_shard_settings
from hf_distill.training.redact import RedactedTokens
from hf_distill.utils.device import has_bf16_accelerator


@dataclass(repr=False)  # RedactedTokens' repr: a dataclass one would print `hub_token`
class DistillationConfig(RedactedTokens, ServedTeacherArguments, CrossTokenizerArguments, OnPolicyArguments, SFTConfig):
    """Configuration for :class:`~hf_distill.DistillationTrainer`.

    Everything from `SFTConfig`/`TrainingArguments` works as usual; the fields below only describe the teacher and
    the loss ``(alpha * CE + (1 - alpha) * T**2 * divergence(teacher || student)) / num_loss_tokens``.
    Works with `HfArgumentParser` (command line, JSON, YAML) like any TrainingArguments subclass. The fields of a
    served teacher (:mod:`hf_distill.served.settings`), of cross-tokenizer distillation
    (:mod:`hf_distill.cross_tokenizer.settings`) and of on-policy distillation (:mod:`hf_distill.on_policy.settings`:
    ``lmbda``, ``seq_kd``, sampling) live beside the code that uses them.
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
    teacher_quantization: str | None = field(
        default=None,
        metadata={
            "help": "Load the teacher with bitsandbytes in '8bit' or '4bit' (NF4, double quantisation; compute in "
            "`teacher_dtype`, default bfloat16 where supported): its decoder layers' weights take 8 or 4 bits instead "
            "of 32 (plus bitsandbytes' scales; embeddings and lm_head stay in `teacher_dtype`). Needs a teacher given "
            "as a path or hub id.",
            "choices": list(QUANTIZATION_MODES),
        },
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
            "help": "Tokens per chunk of the KD loss; its extra memory is about 4 x chunk x vocab float32 values for "
            "the default forward KL with a live teacher (up to 10 for other divergences, 2-3 with a `teacher_cache`; "
            "see hf_distill.losses.chunked). Default: 128 tokens (fewer when chunk x vocab would pass 32M, never "
            "under 64); 4M / vocab with a `teacher_cache` (hf_distill.losses.chunked.default_chunk_size)."
        },
    )

    feature_layers: str = field(
        default="uniform",
        metadata={
            "help": "Hidden-state alignment: teacher:student layer pairs such as '0:0,2:1,4:2' (0 = embeddings, i = "
            "output of layer i), or 'uniform' (student layer j <- teacher layer round(j * L_t / L_s)). Used when "
            "feature_weight > 0 or attention_weight > 0."
        },
    )
    feature_loss: str = field(
        default="mse",
        metadata={"help": "Hidden-state loss per pair: 'mse', 'cosine' or 'nmse' (MSE of per-token standardised "
                  "states: scale-free).", "choices": ["mse", "cosine", "nmse"]},
    )
    feature_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the hidden-state alignment loss (per loss token, added to the KD loss); "
                  "0 = off (no hidden states are collected)."},
    )
    feature_pair_weights: str | None = field(
        default=None,
        metadata={"help": "Comma-separated weight per layer pair, e.g. '0.5,1' (default 1 each)."},
    )
    feature_projector: str = field(
        default="linear",
        metadata={"help": "Map from student to teacher width, trained with the student and kept out of the saved "
                  "model: 'linear' or 'identity' (equal widths only).", "choices": ["linear", "identity"]},
    )
    attention_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of attention-map transfer (KL per head at the feature_layers pairs); 0 = off. "
                  "Needs attn_implementation='eager' and equal head counts in both models."},
    )
    co_distill: bool = field(
        default=False,
        metadata={"help": "Co-distillation (mutual learning): also train the teacher on its CE + KD from the "
                  "student. Saved to output_dir/teacher. Helps peers of similar size, not a strong teacher."},
    )
    teacher_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the teacher with co_distill (default: learning_rate)."},
    )

    curriculum: str | None = field(
        default=None,
        metadata={"help": "Order training from easy to hard by 'num_steps', 'length', 'teacher_loss' (the live "
                  "teacher's loss per example) or a numeric column name; default: random order. See "
                  "hf_distill.training.curriculum."},
    )
    curriculum_epochs: int = field(
        default=1,
        metadata={"help": "Epochs ordered easy to hard before shuffling uniformly (with `curriculum`)."},
    )
    fully_shard: bool = field(
        default=False,
        metadata={"help": "Shard the student and a live teacher across the launched processes with PyTorch's FSDP2 "
                  "(`torch.distributed.fsdp.fully_shard`, one unit per decoder layer plus the root), applied by the "
                  "trainer itself: the FSDP that runs on CPU processes over gloo, where accelerate drops its FSDP "
                  "plugin with `use_cpu`. Launch with torchrun or `accelerate launch` (recipes/accelerate/README.md); "
                  "see hf_distill.training.fsdp for what is sharded, saved and refused."},
    )
    # TRL's field with a new default (None): loss on the assistant turns of conversations whatever the template.
    assistant_only_loss: bool | None = field(
        default=None,
        metadata={"help": "Loss on `messages` (chat) data. None (default) or True: only on the assistant turns "
                  "(content and end-of-turn token), found by rendering each conversation message by message, so "
                  "templates without {% generation %} markers (SmolLM2, Qwen2.5, Llama 3) work; a template that "
                  "rewrites earlier turns fails at construction. False: TRL's behaviour, loss on the whole "
                  "conversation. Prompt-completion data follows `completion_only_loss` (True adds TRL's own masks)."},
    )

    def __post_init__(self):
        # TRL turns bf16 on by default, which TrainingArguments rejects on a machine with no accelerator unless
        # `use_cpu` is set. Keep TRL's default where it can run, fall back to fp32 elsewhere.
        if self.bf16 is None and not self.fp16 and not self.use_cpu and not has_bf16_accelerator():
            self.bf16 = False
        # transformers 5 renamed gradient_checkpointing (TRL's default: on) to activation_checkpointing and warns on
        # every config that sets the old name; carry TRL's value over under the new name, behaviour unchanged.
        if getattr(self, "activation_checkpointing", False) is None:
            self.activation_checkpointing = self.gradient_checkpointing
        super().__post_init__()
        LossSpec(self.kd_loss, self.temperature, self.alpha, self.beta, self.kd_chunk_size)  # validates ranges
        _check_teacher_quantization(self)
        check_feature_settings(self)
        check_codistill_settings(self)
        check_fully_shard_settings(self)
        self.check_served_teacher_settings()
        self.check_cross_tokenizer_settings()
        self.check_on_policy_settings()
        if self.curriculum is not None and self.train_sampling_strategy != "random":
            raise ValueError(f"curriculum={self.curriculum!r} sets the order of training examples itself: drop "
                             f"train_sampling_strategy={self.train_sampling_strategy!r} or curriculum.")
        if self.curriculum_epochs < 1:
            raise ValueError(f"curriculum_epochs must be at least 1, got {self.curriculum_epochs}")
        if self.assistant_only_loss not in (None, True, False):
            raise ValueError(f"assistant_only_loss must be None (assistant turns of conversations), True or False "
                             f"(loss on the whole conversation), got {self.assistant_only_loss!r}")

    def loss_spec(self, vocab_size: int, sparse: bool = False) -> LossSpec:
        chunk = self.kd_chunk_size or default_kd_chunk_size(vocab_size, sparse)
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


def _check_teacher_quantization(config: DistillationConfig) -> None:
    if config.teacher_quantization is None:
        return
    if config.teacher_quantization not in QUANTIZATION_MODES:
        raise ValueError(f"teacher_quantization={config.teacher_quantization!r}: use '8bit', '4bit' or leave it unset.")
    if config.teacher_cache is not None:
        raise ValueError("teacher_quantization applies to a live teacher, not to a `teacher_cache`: unset one of them.")
    if getattr(config, "co_distill", False):
        raise ValueError("co_distill trains the teacher's weights, which bitsandbytes-quantised weights cannot be: "
                         "unset teacher_quantization or co_distill.")
    init_kwargs = config.teacher_model_init_kwargs
    if isinstance(init_kwargs, dict) and "quantization_config" in init_kwargs:
        raise ValueError(
            "Both teacher_quantization and teacher_model_init_kwargs['quantization_config'] are set: keep one."
        )
