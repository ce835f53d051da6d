"""`DistillationTrainer`: TRL's `SFTTrainer` with a teacher.

Swap ``Trainer(...)``/``SFTTrainer(...)`` for ``DistillationTrainer(..., teacher_model=teacher)`` (or
``teacher_cache=DIR``, a cache of the teacher's top-k log-probabilities) and keep the rest of the script. This class
only wires things together: the loss lives in :mod:`hf_distill.losses`, the teacher in :mod:`hf_distill.teacher`,
batch checks in :mod:`hf_distill.batch_checks`.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import TrainingArguments
from trl import SFTTrainer
from trl.models.utils import _ForwardRedirection, prepare_deepspeed, prepare_fsdp

from hf_distill.batch_checks import check_not_empty, check_trial_batch, uses_own_collator
from hf_distill.config import DistillationConfig
from hf_distill.losses import LossOutput, fused_distillation_loss
from hf_distill.modeling import final_hidden_states, has_plain_output_head, output_head, output_vocab_size
from hf_distill.teacher.cache import CACHE_KEY, CachedTeacher, KeyedCollator, TeacherCache
from hf_distill.teacher.live import LiveTeacher, load_teacher, load_teacher_tokenizer
from hf_distill.teacher.vocab import check_same_tokenizer, shared_vocab_size


class DistillationTrainer(SFTTrainer):
    """Trains ``model`` (the student) to match ``teacher_model``'s next-token distributions.

    Args:
        model, args, data_collator, train_dataset, eval_dataset, processing_class, **kwargs: as for `SFTTrainer`.
            ``args`` may be a `DistillationConfig`, an `SFTConfig` or plain `TrainingArguments`.
        teacher_model: a model, or a local path / hub id loaded with ``from_pretrained``. Defaults to
            ``args.teacher_model_name_or_path``.
        teacher_processing_class: the teacher's tokenizer, to check it matches the student's. Loaded from the
            teacher's directory when omitted.
        teacher_cache: instead of a teacher model, a teacher-logit cache (a directory written by ``hf-distill
            cache-logits``, or a :class:`~hf_distill.teacher.cache.TeacherCache`). Defaults to ``args.teacher_cache``.
            Checked against the tokenizer, temperature and datasets here, before the first step.
    """

    _tag_names = ["trl", "hf_distill", "distillation"]
    _name = "Distillation"
    loss_is_scaled_for_ga = True  # compute_loss divides by the tokens of the whole accumulated batch

    def __init__(
        self,
        model: str | nn.Module,
        args: TrainingArguments | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        *,
        teacher_model: str | os.PathLike | nn.Module | None = None,
        teacher_processing_class=None,
        teacher_cache: str | os.PathLike | TeacherCache | None = None,
        **kwargs,
    ):
        model_name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "student"
        args = DistillationConfig.from_training_args(args, f"{os.path.basename(str(model_name))}-distilled")
        teacher_model = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
        teacher_cache = teacher_cache if teacher_cache is not None else args.teacher_cache
        if (teacher_model is None) == (teacher_cache is None):
            raise ValueError(
                "DistillationTrainer needs one teacher: pass `teacher_model=` (a model or a path) or set "
                "`teacher_model_name_or_path` in DistillationConfig, or pass `teacher_cache=` (a directory written by "
                "`hf-distill cache-logits`)" + (", not both." if teacher_model is not None else ".")
            )
        check_not_empty(train_dataset, "train_dataset")
        if uses_own_collator(data_collator, train_dataset):
            # A stock transformers script: tokenized data + its own collator. Keep both exactly as `Trainer` would.
            args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        super().__init__(model, args, data_collator, train_dataset, eval_dataset, processing_class, **kwargs)
        # `Trainer` counts `num_items_in_batch` (the loss tokens of the whole accumulated batch) only for models
        # that accept loss kwargs; our loss always uses it.
        self.model_accepts_loss_kwargs = True
        self._forward_redirection = _ForwardRedirection()
        if teacher_cache is not None:
            self._use_cache(teacher_cache if isinstance(teacher_cache, TeacherCache) else TeacherCache(teacher_cache))
        check_trial_batch(self)  # before a live teacher is loaded: bad data fails fast
        if teacher_cache is None:
            self._use_live_teacher(teacher_model, teacher_processing_class)

    def _use_live_teacher(self, teacher_model, teacher_processing_class) -> None:
        args = self.args
        teacher_tokenizer = teacher_processing_class or load_teacher_tokenizer(teacher_model)
        teacher = load_teacher(
            teacher_model, args.teacher_dtype, args.teacher_model_init_kwargs, trust_remote_code=args.trust_remote_code
        )
        if teacher_tokenizer is not None:
            check_same_tokenizer(self._tokenizer, teacher_tokenizer)
        self.vocab_size = shared_vocab_size(
            output_vocab_size(self.model), output_vocab_size(teacher), len(self._tokenizer)
        )
        self.loss_spec = args.loss_spec(self.vocab_size)
        self.teacher = self._place_teacher(teacher, args.teacher_device)

    def _use_cache(self, cache: TeacherCache) -> None:
        evals = self.eval_dataset if isinstance(self.eval_dataset, dict) else {"eval_dataset": self.eval_dataset}
        datasets = {"train_dataset": self.train_dataset, **{k: v for k, v in evals.items() if v is not None}}
        cache.check(tokenizer=self._tokenizer, student_vocab_rows=output_vocab_size(self.model),
                    temperature=self.args.temperature, datasets=datasets)
        self.data_collator = KeyedCollator(self.data_collator)  # batches carry their examples' cache keys
        self.teacher, self.vocab_size = CachedTeacher(cache), cache.vocab_size
        self.loss_spec = self.args.loss_spec(self.vocab_size, sparse=True)

    def _place_teacher(self, teacher: nn.Module, device: str | None) -> LiveTeacher:
        if self.is_deepspeed_enabled:
            return LiveTeacher(prepare_deepspeed(teacher, self.accelerator), teacher)
        if self.is_fsdp_enabled:
            return LiveTeacher(prepare_fsdp(teacher, self.accelerator), teacher)
        has_device_map = bool(getattr(teacher, "hf_device_map", None))
        if not has_device_map:  # a teacher dispatched with device_map stays where it was put
            teacher = teacher.to(torch.device(device) if device else self.accelerator.device)
        return LiveTeacher(teacher)

    @property
    def teacher_model(self) -> nn.Module | None:
        return self.teacher.unwrapped  # None for a teacher cache

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Run the whole loss inside the (DDP/FSDP/DeepSpeed) wrapper's forward, so its hooks see the lm_head use.
        unwrapped = self.accelerator.unwrap_model(model)
        output: LossOutput = self._forward_redirection(
            model, unwrapped, self._distillation_loss, unwrapped, inputs, num_items_in_batch
        )
        self._log_loss_parts(output, inputs)
        loss = output.loss
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the normaliser is global
        if return_outputs:
            with torch.no_grad():
                outputs = model(**{key: value for key, value in inputs.items() if key not in ("labels", CACHE_KEY)})
            return loss, outputs
        return loss

    def _distillation_loss(self, student: nn.Module, inputs: dict, num_items_in_batch) -> LossOutput:
        use_head = has_plain_output_head(student)
        states = final_hidden_states(student, inputs, use_head)  # (B, T, H) or (B, T, V)
        targets = inputs["labels"][:, 1:].to(states.device)  # next-token labels, (B, T-1)
        loss_mask = targets != -100
        teacher_signal = self.teacher.signal(inputs, loss_mask, self.vocab_size, states.device)
        weight, bias = output_head(student) if use_head else (None, None)
        return fused_distillation_loss(
            states[:, :-1][loss_mask], weight, bias, teacher_signal, targets[loss_mask], self.loss_spec,
            num_items_in_batch,
        )

    def _log_loss_parts(self, output: LossOutput, inputs: dict) -> None:
        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        stats = torch.stack([output.kd_sum, output.ce_sum, output.top1_agree]).float()
        count = torch.tensor(float(output.num_tokens), device=stats.device)
        stats, count = gather(stats[None]).sum(0), gather(count[None]).sum()
        if count > 0:
            kd, ce, agree = (stats / count).tolist()
            self._metrics[mode]["kd_loss"].append(kd)
            self._metrics[mode]["ce_loss"].append(ce)
            self._metrics[mode]["top1_agreement"].append(agree)
        if mode == "train" and "attention_mask" in inputs:
            self._total_train_tokens += gather(inputs["attention_mask"].sum()[None]).sum().item()
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def _set_signature_columns_if_needed(self):
        if self._skip_prepare_dataset and not self._is_vision_dataset:
            # Data prepared by the user: keep the columns a plain `Trainer` would keep (attention_mask included).
            return super(SFTTrainer, self)._set_signature_columns_if_needed()
        return super()._set_signature_columns_if_needed()
