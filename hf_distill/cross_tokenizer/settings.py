"""The cross-tokenizer fields of `DistillationConfig` (a dataclass mixin, so this package owns its own knobs)."""

from __future__ import annotations

from dataclasses import dataclass, field

CROSS_TOKENIZER_METHODS = ("uld", "align")


@dataclass
class CrossTokenizerArguments:
    cross_tokenizer: str | None = field(
        default=None,
        metadata={"help": "Distil from a teacher with another tokenizer: 'align' (span alignment by character "
                  "offsets, exact over shared tokens) or 'uld' (universal logit distillation: sorted probabilities). "
                  "Default: a teacher with another tokenizer is refused.", "choices": list(CROSS_TOKENIZER_METHODS)},
    )
    cross_tokenizer_top_k: int | None = field(
        default=256,
        metadata={"help": "With cross_tokenizer: ranks of the sorted-probability (ULD) comparison taken one by one; "
                  "the rest of each distribution is compared as one bin. None sorts whole vocabularies (exact, slow "
                  "at 262k tokens)."},
    )

    def check_cross_tokenizer_settings(self) -> None:
        method = self.cross_tokenizer
        if method is not None and method not in CROSS_TOKENIZER_METHODS:
            raise ValueError(f"cross_tokenizer={method!r}: use one of {CROSS_TOKENIZER_METHODS} or "
                             "leave it unset (same tokenizer).")
        if self.cross_tokenizer_top_k is not None and self.cross_tokenizer_top_k < 1:
            raise ValueError(f"cross_tokenizer_top_k must be a positive number of ranks or None, got "
                             f"{self.cross_tokenizer_top_k}.")
        if method is None:
            return
        conflicts = {
            "teacher_cache": (self.teacher_cache is not None, "the cache stores the teacher's log-probabilities over "
                              "the student's ids; distil across tokenizers with a live teacher (`teacher_model=`)"),
            "teacher_url": (getattr(self, "teacher_url", None) is not None, "a served teacher is scored on the "
                            "student's tokens; use a live teacher (`teacher_model=`)"),
            "kd_loss": (self.kd_loss != "forward_kl", "the cross-tokenizer losses define their own distance "
                        "(hf_distill.losses.cross_tokenizer); leave kd_loss at its default"),
            "feature_weight/attention_weight": (self.feature_weight > 0 or self.attention_weight > 0,
                                                "feature alignment pairs positions of one tokenization"),
            "co_distill": (self.co_distill, "co-distillation trains the teacher on the student's ids"),
            "curriculum='teacher_loss'": (self.curriculum == "teacher_loss", "it runs the teacher on the student's "
                                          "ids; use curriculum='length'"),
            "padding_free/packing": (bool(self.padding_free or self.packing), "each row is re-tokenized for the "
                                     "teacher from its own attention_mask; set padding_free=False and packing=False"),
        }
        for name, (conflict, why) in conflicts.items():
            if conflict:
                raise ValueError(f"cross_tokenizer={method!r} cannot be combined with {name}: {why}.")


METHOD_NAMES = {
    "align": "span alignment (tokens spelled alike: generalised KL; the rest: sorted-probability W1)",
    "uld": "ULD (Wasserstein-1 between sorted probability vectors)",
}


def card_settings(args) -> list[tuple[str, str]]:
    """The model card's loss rows for a cross-tokenizer run (hf_distill.cards.trainer.distillation_settings)."""
    distance = {"align": "(T² · KL over shared tokens + W1 over the rest)", "uld": "W1(sorted p, sorted q)"}
    top_k = args.cross_tokenizer_top_k
    return [
        ("cross-tokenizer method", f"`{args.cross_tokenizer}`: {METHOD_NAMES[args.cross_tokenizer]}"),
        ("temperature", f"{args.temperature:g}"), ("alpha (weight of the hard-label CE)", f"{args.alpha:g}"),
        ("objective", f"alpha * CE + (1 - alpha) * {distance[args.cross_tokenizer]}, at the positions where both "
         "tokenizations have read the same text; per student loss token"),
        ("sorted-probability ranks", "all" if top_k is None else f"top {top_k} + one tail bin"),
    ]
