"""Co-distillation (Deep Mutual Learning, Zhang et al. 2018): the teacher learns too, from the labels and the student.

With ``co_distill=True`` the teacher is unfrozen and optimised in the same optimizer as the student (its own param
group, learning rate ``teacher_learning_rate``). Each step adds the teacher's own objective, the mirror image of the
student's::

    student: alpha * CE(student) + (1 - alpha) * T**2 * D(teacher.detach() || student)
    teacher: alpha * CE(teacher) + (1 - alpha) * T**2 * D(student.detach() || teacher)

Both are summed into one loss and one backward; the ``detach`` keeps each model's gradient its own. The co-trained
teacher is written to ``output_dir/teacher`` at the end of training and into every checkpoint (so a resumed run
continues from the teacher it had, not the original).

When it helps: when the "teacher" is not much larger than the student or is itself under-trained (peer models
trained from scratch together generalise better than either alone). When it does not: with a strong, converged
teacher, learning from a weaker student mostly pulls it down; keep the default (off) and a frozen teacher.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from hf_distill.losses import LossOutput, LossSpec, fused_distillation_loss
from hf_distill.losses.chunked import autocast_head
from hf_distill.losses.targets import DenseTeacherSignal
from hf_distill.models.introspect import loss_rows, output_head

if TYPE_CHECKING:
    from hf_distill.objectives.logit import LogitKD
    from hf_distill.teacher.live import LiveTeacher


def check_codistill_settings(config) -> None:
    """Checks of the co-distillation fields of `DistillationConfig` (run in its __post_init__)."""
    if config.teacher_learning_rate is not None:
        if not config.co_distill:
            raise ValueError("teacher_learning_rate only applies to a co-trained teacher: set co_distill=True, or drop "
                             "teacher_learning_rate (a plain teacher is frozen).")
        if not config.teacher_learning_rate > 0:
            raise ValueError(f"teacher_learning_rate must be > 0, got {config.teacher_learning_rate}.")
    require_live_teacher_for_codistill(config, config.teacher_cache is not None)


def require_live_teacher_for_codistill(config, uses_cache: bool) -> None:
    if uses_cache and config.co_distill:
        raise ValueError("co_distill trains the teacher, so its losses need a live teacher (its gradients), not a "
                         "teacher_cache of logits: pass teacher_model_name_or_path instead, or set co_distill=False.")


def unfreeze_teacher(teacher: nn.Module) -> nn.Module:
    """Make a loaded (frozen, eval-mode) teacher trainable, refusing teachers that cannot be trained as is."""
    if getattr(teacher, "is_quantized", False) or getattr(teacher, "hf_quantizer", None) is not None:
        raise ValueError("co_distill=True cannot train a quantized teacher. Load it in float32 (teacher_dtype="
                         "'float32', no quantization_config) or turn co_distill off.")
    dtypes = {p.dtype for p in teacher.parameters()}
    if dtypes != {torch.float32}:
        raise ValueError(f"co_distill=True trains the teacher, whose parameters are {sorted(map(str, dtypes))}; "
                         "load it in float32 (teacher_dtype='float32'). Mixed precision still applies via bf16/fp16.")
    teacher.requires_grad_(True)
    teacher.train()
    return teacher


def teacher_param_group(teacher: nn.Module, learning_rate: float, weight_decay: float) -> dict:
    return {"params": [p for p in teacher.parameters() if p.requires_grad], "lr": learning_rate,
            "weight_decay": weight_decay}


def teacher_loss(
    teacher_rows: torch.Tensor,
    teacher: nn.Module,
    teacher_uses_head: bool,
    student_rows: torch.Tensor,
    student: nn.Module,
    student_uses_head: bool,
    vocab_size: int,
    targets: torch.Tensor,
    spec: LossSpec,
    num_items_in_batch,
) -> LossOutput:
    """The teacher's DML objective over the N loss tokens (same normalisation as the student's).

    ``teacher_rows``/``student_rows`` are ``(N, H)`` final states (or ``(N, V)`` logits when a model has no plain
    head). The student side is detached: this loss moves the teacher only. Under autocast both heads project in its
    dtype, as they do for the student's loss.
    """
    weight, bias = output_head(student) if student_uses_head else (None, None)
    weight, bias = autocast_head(_detach(weight), _detach(bias))
    student_signal = DenseTeacherSignal(student_rows.detach(), vocab_size, weight, bias, teacher_rows.device)
    teacher_weight, teacher_bias = output_head(teacher) if teacher_uses_head else (None, None)
    return fused_distillation_loss(
        teacher_rows, teacher_weight, teacher_bias, student_signal, targets.to(teacher_rows.device), spec,
        num_items_in_batch,
    )


def codistill_term(
    teacher: LiveTeacher,
    teacher_states: torch.Tensor,
    logit: LogitKD,
    student: nn.Module,
    student_uses_head: bool,
    vocab_size: int,
    spec: LossSpec,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The teacher's term of one co-distillation step, to add to the student's loss, and its sums to log.

    ``teacher_states``: the live teacher's ``(B, T, H)`` final states (or ``(B, T, V)`` logits), run with gradients;
    ``logit``: the student's logit KD of the same batch, whose loss tokens, rows, targets and normaliser it reuses.
    """
    mutual = teacher_loss(
        loss_rows(teacher_states, logit.loss_mask), teacher.unwrapped, teacher.use_head, logit.student_rows, student,
        student_uses_head, vocab_size, logit.targets, spec, logit.normalizer,
    )
    return mutual.loss, {"teacher_kd_loss": mutual.kd_sum, "teacher_ce_loss": mutual.ce_sum}


def save_teacher(teacher: nn.Module, output_dir: str | os.PathLike, processing_class=None) -> Path:
    """Write the co-trained teacher (and the tokenizer) to ``output_dir/teacher`` in ``save_pretrained`` format."""
    directory = Path(output_dir) / "teacher"
    teacher.save_pretrained(directory)
    if processing_class is not None:
        processing_class.save_pretrained(directory)
    return directory


def _detach(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach()
