"""`DistillationTrainer`: TRL's `SFTTrainer` with a teacher.

Swap ``Trainer(...)``/``SFTTrainer(...)`` for ``DistillationTrainer(..., teacher_model=teacher)`` (or
``teacher_cache=DIR``, a cache of the teacher's top-k log-probabilities) and keep the rest of the script. This class
only wires things together: the loss lives in :mod:`hf_distill.losses`, the teacher in :mod:`hf_distill.teacher`,
batch checks in :mod:`hf_distill.training.batch_checks`.
"""

from __future__ import annotations

import itertools
import os

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from transformers import TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_distill._compat import (
    count_train_tokens,
    forward_redirection,
    log_metric,
    prepare_deepspeed,
    prepare_fsdp,
    run_output_dir,
    sft_tokenizer,
)
from hf_distill.cache.collator import KeyedCollator
from hf_distill.cache.format import CACHE_KEY, preparation_fields
from hf_distill.cache.reader import CachedTeacher, TeacherCache
from hf_distill.config import DistillationConfig
from hf_distill.features.settings import require_live_teacher_for_features
from hf_distill.losses import LossOutput
from hf_distill.models.introspect import (
    final_hidden_states,
    has_plain_output_head,
    output_vocab_size,
)
from hf_distill.models.quantization import keep_4bit_trainable
from hf_distill.objectives.aligned import AlignedObjective, build_aligner
from hf_distill.objectives.codistill import (
    require_live_teacher_for_codistill,
    save_teacher,
    teacher_param_group,
    unfreeze_teacher,
)
from hf_distill.objectives.logit import logit_distillation
from hf_distill.models.moe import router_logits_off
from hf_distill.on_policy import attach_on_policy, refuse_cache_when_generating
from hf_distill.teacher.live import LiveTeacher, load_teacher, load_teacher_tokenizer
from hf_distill.teacher.vocab import check_same_tokenizer, shared_vocab_size
from hf_distill.training import fsdp
from hf_distill.training.batch_checks import (
    check_columns,
    check_not_empty,
    check_trial_batch,
)
from hf_distill.training.checkpoints import discard_failed_save, resolve_resume
from hf_distill.training.curriculum import curriculum_sampler
from hf_distill.training.extra_modules import (
    ExtraModulesCallback,
    restore_extra_modules,
    save_extra_modules,
)
from hf_distill.training.preparation import PreparingSFTTrainer


class DistillationTrainer(PreparingSFTTrainer):
    """Trains ``model`` (the student) to match ``teacher_model``'s next-token distributions.

    Args:
        model, args, data_collator, train_dataset, eval_dataset, processing_class, **kwargs: as for `SFTTrainer`.
            ``args`` may be a `DistillationConfig`, an `SFTConfig` or plain `TrainingArguments`.
        teacher_model: a model, or a local path / hub id loaded with ``from_pretrained``. Defaults to
            ``args.teacher_model_name_or_path``.
        teacher_processing_class: the teacher's tokenizer, to check it matches the student's. Loaded from the
            teacher's directory when omitted.
        teacher_cache: instead of a teacher model, a teacher-logit cache (a directory written by ``hf-distill
            cache-logits``, or a :class:`~hf_distill.cache.reader.TeacherCache`). Defaults to ``args.teacher_cache``.
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
        model_name = model if isinstance(model, str) else getattr(model.config, "name_or_path", "") or "student"
        args = DistillationConfig.from_training_args(args, f"{os.path.basename(str(model_name))}-distilled")
        teacher_model = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
        teacher_cache = teacher_cache if teacher_cache is not None else args.teacher_cache
        sources = {"teacher_model": teacher_model, "teacher_cache": teacher_cache, "teacher_url": args.teacher_url}
        given = [name for name, value in sources.items() if value is not None]
        if len(given) != 1:
            raise ValueError(
                "DistillationTrainer needs one teacher: pass `teacher_model=` (a model or a path) or set "
                "`teacher_model_name_or_path` in DistillationConfig, or pass `teacher_cache=` (a directory written by "
                "`hf-distill cache-logits`), or set `teacher_url` (an OpenAI-compatible server)"
                + (f"; got {' and '.join(given)}: keep one." if given else ".")
            )
        check_not_empty(train_dataset, "train_dataset")
        check_columns(train_dataset, args.dataset_text_field)
        # A stock transformers script (tokenized data + its own collator) keeps both exactly as `Trainer` would.
        super().__init__(model, args, data_collator, train_dataset, eval_dataset, processing_class, **kwargs)
        # `Trainer` counts `num_items_in_batch` (the loss tokens of the whole accumulated batch) only for models
        # that accept loss kwargs; our loss always uses it.
        self.model_accepts_loss_kwargs = True
        router_logits_off(self.model)
        if args.fully_shard:  # FSDP2 by the trainer itself (hf_distill.training.fsdp), before any optimizer exists
            fsdp.shard_student(self)
        keep_4bit_trainable(self.model)  # a QLoRA student must not switch to bnb's CPU inference kernel after eval
        self._forward_redirection = forward_redirection()
        self._aligned, self._extra_modules, self._extra_param_groups = None, {}, []  # see _setup_latent_alignment
        self._objective = None  # an objective of its own (cross-tokenizer), called in place of the logit KD
        if teacher_cache is not None:
            self._use_cache(teacher_cache)
        elif args.teacher_url is not None:
            self._use_served_teacher()
        check_trial_batch(self)  # before a live teacher is loaded: bad data fails fast
        if teacher_model is not None:
            self._use_live_teacher(teacher_model, teacher_processing_class)
        self._on_policy = attach_on_policy(self)  # None unless lmbda > 0 or seq_kd (hf_distill.on_policy)

    def _use_live_teacher(self, teacher_model, teacher_processing_class) -> None:
        args = self.args
        teacher_tokenizer = teacher_processing_class or load_teacher_tokenizer(teacher_model)
        teacher = load_teacher(
            teacher_model, args.teacher_dtype, args.teacher_model_init_kwargs, trust_remote_code=args.trust_remote_code,
            quantization=args.teacher_quantization, device=args.teacher_device,
        )
        if args.cross_tokenizer is not None:
            return self._use_cross_tokenizer_teacher(teacher, teacher_tokenizer)
        if teacher_tokenizer is not None:
            check_same_tokenizer(sft_tokenizer(self), teacher_tokenizer)
        self.vocab_size = shared_vocab_size(
            output_vocab_size(self.model), output_vocab_size(teacher), len(sft_tokenizer(self))
        )
        self.loss_spec = args.loss_spec(self.vocab_size)
        teacher = unfreeze_teacher(teacher) if args.co_distill else teacher
        self.teacher = self._place_teacher(teacher, args.teacher_device)
        self._setup_latent_alignment()

    def _setup_latent_alignment(self) -> None:
        """Feature alignment / co-distillation (off by default): modules trained beside the student, never in it."""
        args = self.args
        aligner = build_aligner(args, self.model, self.teacher.unwrapped)
        if aligner is None and not args.co_distill:
            return
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or self.optimizer is not None:
            raise ValueError("Feature alignment and co_distill train modules beside the student with the Trainer's "
                             "own optimizer, on one device or DDP: drop `optimizers=`/DeepSpeed/FSDP or turn them off.")
        if aligner is not None and any(True for _ in aligner.parameters()):
            self._extra_modules["feature_projectors"] = aligner.to(self.accelerator.device)
            self._extra_param_groups.append({"params": list(aligner.parameters()), "weight_decay": args.weight_decay})
        if args.co_distill:
            teacher = self._extra_modules["codistill_teacher"] = self.teacher.unwrapped
            self._extra_param_groups.append(teacher_param_group(
                teacher, args.teacher_learning_rate or args.learning_rate, args.weight_decay))
            self.teacher.model = self._ddp(teacher)
        self._aligned = AlignedObjective(self.teacher, self._ddp(aligner), self.vocab_size, self.loss_spec,
                                         args.feature_weight, args.attention_weight, args.co_distill)
        self.add_callback(ExtraModulesCallback(self._extra_modules, args.max_grad_norm))

    def _ddp(self, module: nn.Module | None) -> nn.Module | None:
        """Under DDP, a module trained outside ``self.model`` needs its own wrapper to all-reduce its gradients.
        Plain DDP, not ``accelerator.prepare_model``: that would wrap its forward in a second autocast; the loss
        already runs under the trainer's one (``_distillation_loss``), on one process and under DDP alike."""
        if module is None or not any(True for _ in module.parameters()) or self.accelerator.num_processes == 1:
            return module
        device = self.accelerator.device
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    def _use_cache(self, cache: str | os.PathLike | TeacherCache) -> None:
        refuse_cache_when_generating(self.args)
        if self.args.cross_tokenizer is not None:  # `teacher_cache=` given to the trainer, not through the config
            raise ValueError(f"cross_tokenizer={self.args.cross_tokenizer!r} cannot use a teacher cache: the cache "
                             "stores the teacher's log-probabilities over the student's ids. Distil across tokenizers "
                             "with a live teacher (`teacher_model=`), or drop cross_tokenizer.")
        require_live_teacher_for_features(self.args, uses_cache=True)
        require_live_teacher_for_codistill(self.args, uses_cache=True)
        cache = cache if isinstance(cache, TeacherCache) else TeacherCache(cache)
        evals = self.eval_dataset if isinstance(self.eval_dataset, dict) else {"eval_dataset": self.eval_dataset}
        datasets = {"train_dataset": self.train_dataset, **{k: v for k, v in evals.items() if v is not None}}
        cache.check(tokenizer=sft_tokenizer(self), student_vocab_rows=output_vocab_size(self.model),
                    temperature=self.args.temperature, datasets=datasets, preparation=preparation_fields(self.args))
        self.data_collator = KeyedCollator(self.data_collator)  # batches carry their examples' cache keys
        self.teacher, self.vocab_size = CachedTeacher(cache), cache.vocab_size
        self.loss_spec = self.args.loss_spec(self.vocab_size, sparse=True)

    def _use_served_teacher(self) -> None:
        """A teacher behind an OpenAI-compatible server scores each batch over HTTP (hf_distill.served.online)."""
        from hf_distill.served.online import attach_served_teacher

        attach_served_teacher(self)  # sets self.teacher, self.vocab_size, self.loss_spec

    def _use_cross_tokenizer_teacher(self, teacher: nn.Module, teacher_tokenizer) -> None:
        """A teacher with its own tokenizer (hf_distill.cross_tokenizer): its own ids, aligned by text offsets."""
        from hf_distill.cross_tokenizer.objective import attach_cross_tokenizer

        attach_cross_tokenizer(self, teacher, teacher_tokenizer)  # sets self.teacher, self._objective, ...

    def _place_teacher(self, teacher: nn.Module, device: str | None) -> LiveTeacher:
        if self.is_deepspeed_enabled:
            return LiveTeacher(prepare_deepspeed(teacher, self.accelerator), teacher)
        if self.is_fsdp_enabled:
            return LiveTeacher(prepare_fsdp(teacher, self.accelerator), teacher)
        if self.args.fully_shard:
            return fsdp.shard_teacher(teacher, self.accelerator.device)
        has_device_map = bool(getattr(teacher, "hf_device_map", None))
        if not has_device_map:  # a teacher dispatched with device_map stays where it was put
            teacher = teacher.to(torch.device(device) if device else self.accelerator.device)
        return LiveTeacher(teacher)

    def _save_checkpoint(self, model, trial) -> None:
        try:
            super()._save_checkpoint(model, trial)
        except OSError as error:  # disk full mid-save: leave no half-written checkpoint-N to resume from
            folder = os.path.join(run_output_dir(self, trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            raise discard_failed_save(folder, error) from error

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self.args.fully_shard:  # sharded model + optimizer (DCP), what resuming loads
            return fsdp.save_sharded_checkpoint(self, output_dir)
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:  # beside their optimizer state, before trainer_state.json marks the save complete
            save_extra_modules(self._extra_modules, output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if not self.args.fully_shard:  # sharded: the weights come back with the optimizer, below
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if self.args.fully_shard and checkpoint is not None:
            return fsdp.load_sharded_checkpoint(self, checkpoint)
        super()._load_optimizer_and_scheduler(checkpoint)

    @property
    def teacher_model(self) -> nn.Module | None:
        return self.teacher.unwrapped  # None for a teacher cache

    def _get_train_sampler(self, train_dataset=None):
        if self.args.curriculum is None:
            return super()._get_train_sampler(train_dataset)
        return curriculum_sampler(self, train_dataset if train_dataset is not None else self.train_dataset)

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        """One optimizer step's micro-batches and ``num_items_in_batch``. With ``lmbda > 0`` or ``seq_kd``, batches
        are completed by the student (or teacher) first, so the count is of the tokens actually trained on."""
        if self._on_policy is None:  # the dataset's completions: transformers' own path
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        batches = self._on_policy.complete(list(itertools.islice(epoch_iterator, num_batches)), self.state.global_step)
        return super().get_batch_samples(iter(batches), len(batches), device)

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
        # This runs in place of the `forward` that accelerate wrapped in its autocast (bf16/fp16), and calls the
        # backbone directly: enter that same autocast here, as SFTTrainer's forward does (a no-op in float32). The
        # teacher follows it where its dtype allows (LiveTeacher); the loss math stays float32 (losses.chunked).
        with self.accelerator.autocast():
            if self._objective is not None:  # cross-tokenizer: hf_distill.cross_tokenizer
                return self._objective(student, inputs, num_items_in_batch)
            if self._aligned is not None:  # feature alignment and/or co-distillation: hf_distill.objectives.aligned
                return self._aligned(student, inputs, num_items_in_batch)
            use_head = has_plain_output_head(student)
            states = final_hidden_states(student, inputs, use_head)  # (B, T, H) or (B, T, V)
            return logit_distillation(
                student, states, use_head, inputs, self.teacher, self.vocab_size, self.loss_spec, num_items_in_batch
            ).output

    def _log_loss_parts(self, output: LossOutput, inputs: dict) -> None:
        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        extras = getattr(output, "extra_sums", {})  # feature/attention/teacher losses, see AlignedLossOutput
        sums = [output.kd_sum, output.ce_sum, output.top1_agree, *extras.values()]
        stats = torch.stack([t.to(output.kd_sum.device, torch.float32) for t in sums])
        count = torch.tensor(float(output.num_tokens), device=stats.device)
        stats, count = gather(stats[None]).sum(0), gather(count[None]).sum()
        if count > 0:
            for name, value in zip(("kd_loss", "ce_loss", "top1_agreement", *extras), (stats / count).tolist()):
                log_metric(self, mode, name, value)
        if mode == "train" and "attention_mask" in inputs:
            count_train_tokens(self, gather(inputs["attention_mask"].sum()[None]).sum().item())

    def create_optimizer(self, model=None):
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        for group in self._extra_param_groups if fresh else []:  # projectors / co-trained teacher
            optimizer.add_param_group(dict(group))
        return optimizer

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        # `True` means the newest checkpoint whose save finished, not one a crash left half-written.
        resume_from_checkpoint = resolve_resume(resume_from_checkpoint, self.args.output_dir)
        if self._extra_modules and resume_from_checkpoint:  # projectors / co-trained teacher live outside the model
            restore_extra_modules(self._extra_modules, resume_from_checkpoint)
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        if self.args.co_distill and self.args.should_save:
            save_teacher(self.teacher.unwrapped, self.args.output_dir, self.processing_class)
        return output

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if self.args.fully_shard:  # every rank gathers, rank 0 writes a plain model
            fsdp.save_full_model(self, output_dir or self.args.output_dir)
        else:
            super().save_model(output_dir, _internal_call)
        if self.args.should_save:  # the card goes with the weights, whatever `save_strategy` says
            from hf_distill.cards.trainer import save_card, trainer_card

            folder = output_dir or self.args.output_dir
            save_card(trainer_card(self, output_dir=folder), folder)

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None, license: str | None = None, **kwargs) -> None:
        """Replaces TRL's card (which `push_to_hub` and every checkpoint write) with ours: the student's starting
        point, the teacher, the distillation settings and the last logged metrics (hf_distill.cards.trainer).
        ``dataset`` (transformers' name for ``dataset_name``) is accepted; other transformers keywords are ignored."""
        if self.is_world_process_zero():
            from hf_distill.cards.trainer import save_card, trainer_card

            dataset_name = dataset_name or kwargs.get("dataset")
            save_card(trainer_card(self, model_name, dataset_name, tags, license), self.args.output_dir)
