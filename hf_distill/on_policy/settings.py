"""The on-policy fields of `DistillationConfig` (a dataclass mixin, so this package owns its own knobs).

Names follow TRL's ``GKDConfig`` where they mean the same (``lmbda``, ``seq_kd``, ``max_new_tokens``) and TRL's
``DistillationConfig``/``GRPOConfig`` for the sampling ones (``num_generations``, ``log_completions``,
``num_completions_to_print``); ``generation_top_p``/``generation_top_k`` carry a prefix because ``top_k``
already means the cached top-k of ``hf-distill cache-logits``, whose parser reads `DistillationConfig` too.
``temperature`` stays the KD temperature it already is; sampling uses it too unless ``generation_temperature`` is
set (TRL's ``DistillationTrainer`` also samples at its loss temperature).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class OnPolicyArguments:
    lmbda: float = field(
        default=0.0,
        metadata={"help": "Share of training micro-batches whose completions the student writes itself (on-policy, "
                  "GKD's lambda), in [0, 1]: each prompt of the batch is completed by sampling from the student and "
                  "the teacher scores every generated token. 0 (default) trains on the dataset's completions only, "
                  "exactly as without this field; 1 is fully on-policy."},
    )
    seq_kd: bool = field(
        default=False,
        metadata={"help": "Sequence-level KD (GKD's seq_kd): the micro-batches the student does not complete are "
                  "completed by the teacher (sampled with the same settings) instead of taken from the dataset. "
                  "Needs a live teacher model."},
    )
    max_new_tokens: int = field(
        default=128,
        metadata={"help": "Most tokens sampled per completion (generation stops earlier at an end-of-sequence token, "
                  "which is trained on, like a dataset completion's)."},
    )
    generation_temperature: float | None = field(
        default=None,
        metadata={"help": "Sampling temperature of generated completions (> 0). Default: `temperature`, the KD "
                  "temperature, as TRL's DistillationTrainer does."},
    )
    generation_top_p: float = field(
        default=1.0,
        metadata={"help": "Nucleus sampling of generated completions, in (0, 1]; 1 = off."},
    )
    generation_top_k: int = field(
        default=0,
        metadata={"help": "Top-k sampling of generated completions; 0 = off, 1 = greedy (deterministic)."},
    )
    num_generations: int = field(
        default=1,
        metadata={"help": "Completions sampled per prompt of a generated micro-batch, which then holds "
                  "per_device_train_batch_size x num_generations sequences."},
    )
    log_completions: bool = field(
        default=True,
        metadata={"help": "Every `logging_steps`, log a sample of the latest generated (prompt, completion) pairs "
                  "and write it to output_dir/completions.jsonl (runs with lmbda > 0 or seq_kd only)."},
    )
    num_completions_to_print: int = field(
        default=4,
        metadata={"help": "How many generated completions each `log_completions` entry shows."},
    )

    @property
    def generates_completions(self) -> bool:
        """Whether any training batch is completed at training time (by the student or, with seq_kd, the teacher)."""
        return self.lmbda > 0 or self.seq_kd

    def check_on_policy_settings(self) -> None:
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(f"lmbda (the share of micro-batches the student completes) must be in [0, 1], got "
                             f"{self.lmbda}. 0 trains on the dataset only, 1 on the student's own samples only.")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")
        if self.generation_temperature is not None and not self.generation_temperature > 0:
            raise ValueError(f"generation_temperature must be > 0, got {self.generation_temperature}; for greedy "
                             "completions set generation_top_k=1.")
        if not 0.0 < self.generation_top_p <= 1.0:
            raise ValueError(f"generation_top_p must be in (0, 1] (1 = off), got {self.generation_top_p}.")
        if self.generation_top_k < 0:
            raise ValueError(f"generation_top_k must be >= 0 (0 = off), got {self.generation_top_k}.")
        if self.num_generations < 1:
            raise ValueError(f"num_generations must be at least 1, got {self.num_generations}.")
        if self.num_completions_to_print < 1:
            raise ValueError(f"num_completions_to_print must be at least 1, got {self.num_completions_to_print}.")
        if not self.generates_completions:
            return
        refused = {
            "teacher_cache": (getattr(self, "teacher_cache", None) is not None,
                              "a teacher cache holds the teacher's log-probs for the dataset's tokens only, and cannot "
                              "score completions sampled during training: use a live teacher (teacher_model= / "
                              "teacher_model_name_or_path) or a served one (teacher_url)"),
            "co_distill": (getattr(self, "co_distill", False),
                           "co-distillation trains the teacher on the batch's tokens, which on generated batches are "
                           "the student's own guesses"),
            "cross_tokenizer": (getattr(self, "cross_tokenizer", None) is not None,
                                "generated completions would have to be re-tokenized for the teacher, which is not "
                                "wired yet"),
            "packing": (getattr(self, "packing", False) or getattr(self, "padding_free", False),
                        "a packed or padding-free row holds several examples, so it has no single prompt to complete"),
        }
        for name, (is_set, why) in refused.items():
            if is_set:
                raise ValueError(f"lmbda={self.lmbda}, seq_kd={self.seq_kd} completes batches at training time, but "
                                 f"{name} is set: {why}. Unset {name}, or set lmbda=0 and seq_kd=False.")
        if self.seq_kd and getattr(self, "teacher_url", None) is not None:
            raise ValueError("seq_kd has the teacher write completions with `generate`, which a served teacher "
                             "(teacher_url) does not offer here: use a live teacher model, or set seq_kd=False.")
        if self.lmbda > 0 and getattr(self, "alpha", 0.0) > 0:
            logger.warning(
                "lmbda=%s with alpha=%s: the hard-label CE also applies to the student's own samples, which raises "
                "the probability of whatever it wrote. On-policy distillation (GKD, MiniLLM, TRL's DistillationTrainer)"
                " uses the divergence alone: set alpha=0 unless you mean it.", self.lmbda, self.alpha)
