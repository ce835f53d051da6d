"""Where hf_distill works around the behaviour of the libraries it builds on, and every private internal of theirs
it relies on (one place, each with its reason; ``tests/test_compat.py`` checks each one)."""

from __future__ import annotations

import logging

_BNB_CPU_OPS_LOGGER = "bitsandbytes.backends.cpu.ops"


class _DropBitsandbytesKernelNote(logging.Filter):
    """bitsandbytes logs "Failed to load CPU gemm_4bit_forward from kernels-community" at import on CPUs with
    AVX512-BF16 when the optional `kernels` package is absent; it then uses its own kernel, which is what we test.
    PEFT imports bitsandbytes whenever it is installed (``peft.helpers``), so the note reached every command, also
    ones that quantise nothing. Other bitsandbytes messages pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


def silence_bitsandbytes_kernel_note() -> None:
    """Install the filter (idempotent). Must run before bitsandbytes is first imported to catch its import note."""
    logger = logging.getLogger(_BNB_CPU_OPS_LOGGER)
    if not any(isinstance(f, _DropBitsandbytesKernelNote) for f in logger.filters):
        logger.addFilter(_DropBitsandbytesKernelNote())


def moved_module(old: str, *new: str):
    """A module ``__getattr__`` for a public module that moved (or was split): its names still import from ``old``
    for one release, found in the ``new`` modules in order, with a DeprecationWarning naming where each one is now."""
    import importlib
    import warnings

    def __getattr__(name: str):
        for module in new:
            found = importlib.import_module(module)
            if hasattr(found, name) and not name.startswith("__"):
                warnings.warn(f"{old} moved: import {name} from {module} ({old} goes in the next release).",
                              DeprecationWarning, stacklevel=2)
                return getattr(found, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__


# --- Private internals of TRL, transformers, datasets and bitsandbytes -----------------------------------------------
# Each hook below names the private thing it relies on; tests/test_compat.py has one test per hook, named after it,
# so a release that moves one fails that test. Imports stay inside the functions: importing trl here would import
# peft (and bitsandbytes) before `silence_bitsandbytes_kernel_note` runs.
#
# Private methods our subclasses override (no hook to call: the override itself is the dependency; each has its test):
#   trl.SFTTrainer._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
#       -> training.preparation.PreparingSFTTrainer
#   trl.SFTTrainer._set_signature_columns_if_needed() -> training.preparation.PreparingSFTTrainer
#   transformers.Trainer._save_checkpoint(model, trial), ._save_optimizer_and_scheduler(output_dir),
#       ._get_train_sampler(train_dataset=None) -> trainer.DistillationTrainer
#   trl.SFTTrainer._tag_names (the tags SFTTrainer adds to the model), read by cards.trainer -> DistillationTrainer
#   transformers.Trainer._save(output_dir, state_dict), ._load_from_checkpoint(resume_from_checkpoint, model=None),
#       ._load_optimizer_and_scheduler(checkpoint) -> trainer.DistillationTrainer with fully_shard (training.fsdp)
#
# Gone already: transformers 5 no longer keeps ``config._commit_hash`` (it pops it in PretrainedConfig.__init__), so
# the ``getattr(config, "_commit_hash", None)`` in cache.writer and cards.trainer is always None there.


def forward_redirection():
    """A TRL ``_ForwardRedirection`` (``trl.models.utils``, private): ``redirect(wrapper, module, method, *args)``
    runs ``method(*args)`` in place of ``module.forward`` inside ``wrapper(*args)``, so the hooks of a DDP/FSDP/
    DeepSpeed wrapper see a computation that is not the module's forward (our loss, a teacher's head)."""
    from trl.models.utils import _ForwardRedirection

    return _ForwardRedirection()


def prepare_deepspeed(model, accelerator):
    """TRL's ``trl.models.utils.prepare_deepspeed(model, accelerator)`` (undocumented): wraps a frozen model (the
    teacher) in a DeepSpeed inference engine with the accelerator's ZeRO config, in eval mode."""
    from trl.models.utils import prepare_deepspeed as prepare

    return prepare(model, accelerator)


def prepare_fsdp(model, accelerator):
    """TRL's ``trl.models.utils.prepare_fsdp(model, accelerator)`` (undocumented): shards a frozen model (the
    teacher) with the accelerator's FSDP plugin (FSDP1 or FSDP2), in eval mode."""
    from trl.models.utils import prepare_fsdp as prepare

    return prepare(model, accelerator)


def mark_model_sharded(trainer) -> None:
    """Tell `Trainer` that ``trainer.model`` already owns its sharding and gradient reduction (FSDP2 applied by
    hf_distill.training.fsdp), through its undocumented ``is_distributed_loading_by_transformers`` flag (read from
    ``model.is_distributed_loading_by_transformers`` in ``__init__``; transformers sets it for models sharded by
    ``from_pretrained(distributed_config=...)``). With it ``_prepare_for_training`` reshards FSDP modules before
    building the optimizer, asks accelerate for autocast only (no DDP wrapper, no second sharding) and defers gradient
    reduction with ``set_requires_gradient_sync`` under gradient accumulation. Set after ``__init__``, whose check of
    the same flag refuses optimizer checkpoints (ours are DCP, see training.fsdp)."""
    if not hasattr(trainer, "is_distributed_loading_by_transformers"):
        raise RuntimeError("this transformers Trainer has no `is_distributed_loading_by_transformers`, which "
                           "fully_shard relies on to keep accelerate from wrapping a sharded model: pin "
                           "transformers>=5.24 or drop fully_shard.")
    trainer.is_distributed_loading_by_transformers = True


def sft_tokenizer(trainer):
    """The tokenizer `SFTTrainer` set up (its private ``_tokenizer``: ``processing_class``, or a processor's
    ``tokenizer``), with the pad/eos tokens it may have added."""
    return trainer._tokenizer


def log_metric(trainer, mode: str, name: str, value: float) -> None:
    """Queue ``value`` under ``name`` for `SFTTrainer`'s next log: its private ``_metrics[mode]`` (a
    ``defaultdict(list)`` per "train"/"eval") is averaged into the logs by ``SFTTrainer.log`` and then cleared."""
    trainer._metrics[mode][name].append(value)


def count_train_tokens(trainer, count: int) -> None:
    """Add ``count`` to `SFTTrainer`'s private running ``_total_train_tokens`` and log it as ``num_tokens``, as
    ``SFTTrainer.compute_loss`` (which ours replaces) does."""
    trainer._total_train_tokens += count
    trainer._metrics["train"]["num_tokens"] = [trainer._total_train_tokens]


def run_output_dir(trainer, trial=None) -> str:
    """Where `Trainer` writes this run's checkpoints: its private ``_get_output_dir(trial=...)`` (``output_dir``, or
    a sub-folder per hyper-parameter-search trial)."""
    return trainer._get_output_dir(trial=trial)


def skips_text_preparation(trainer) -> bool:
    """Whether `SFTTrainer` left a text (not vision) dataset unprepared: its private ``_skip_prepare_dataset`` (from
    ``dataset_kwargs={"skip_prepare_dataset": True}``, or set for vision data) and ``_is_vision_dataset``."""
    return bool(trainer._skip_prepare_dataset and not trainer._is_vision_dataset)


def set_trainer_signature_columns(trainer) -> None:
    """Run `transformers.Trainer`'s own ``_set_signature_columns_if_needed`` (private), skipping `SFTTrainer`'s
    override: the model's forward arguments plus the label names (``attention_mask`` included), where SFTTrainer's
    keeps ``input_ids``, ``labels`` and ``seq_lengths`` only. Relies on SFTTrainer overriding it and nothing between
    SFTTrainer and Trainer doing so."""
    from trl import SFTTrainer

    super(SFTTrainer, trainer)._set_signature_columns_if_needed()


def signature_columns(trainer) -> list[str]:
    """The columns `Trainer` keeps with ``remove_unused_columns``: its private ``_set_signature_columns_if_needed()``
    then ``_signature_columns`` (what an iterable dataset's examples are filtered to)."""
    trainer._set_signature_columns_if_needed()
    return trainer._signature_columns


def remove_unused_columns(trainer, dataset, description: str | None = None):
    """``dataset`` without the columns the train dataloader would drop: `Trainer`'s private
    ``_remove_unused_columns(dataset, description)`` (a no-op unless ``args.remove_unused_columns``)."""
    return trainer._remove_unused_columns(dataset, description)


def attn_implementation(config) -> str | None:
    """The attention implementation a loaded model runs: transformers' private ``config._attn_implementation``
    ("eager", "sdpa", ...; the constructor argument ``attn_implementation`` is not kept as an attribute)."""
    return getattr(config, "_attn_implementation", None)


def dataset_fingerprint(dataset) -> str:
    """`datasets`' private ``Dataset._fingerprint``: a hash of a dataset's origin and of the transforms applied to
    it, stable for a dataset loaded from files (random for one built in memory)."""
    return dataset._fingerprint


def modules_not_to_quantize(model, skip_modules: list[str] | None) -> list[str]:
    """The module names transformers' bitsandbytes quantizer keeps unquantised in ``model`` (lm_head, tied weights,
    ``skip_modules``, the model's private ``_keep_in_fp32_modules``): ``HfQuantizer.get_modules_to_not_convert`` of
    ``transformers.quantizers.base``, an internal module."""
    from transformers.quantizers.base import HfQuantizer

    return HfQuantizer.get_modules_to_not_convert(model, skip_modules, model._keep_in_fp32_modules)


def should_quantize_module(name: str, modules_not_to_convert: list[str]) -> bool:
    """Whether transformers' bitsandbytes quantizer replaces the module ``name`` (``should_convert_module`` of the
    internal ``transformers.quantizers.quantizers_utils``)."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    return should_convert_module(name, modules_not_to_convert)


def stop_cpu_4bit_repacking(model) -> int:
    """Keep bitsandbytes' 4-bit layers off its CPU inference kernel: bitsandbytes 0.50's ``Linear4bit`` sets an
    undocumented ``support_avx512bf16_for_cpu = has_avx512bf16()`` at construction and, while it is True, repacks its
    weight for that kernel on the first eval-mode no-grad forward. Sets it False on every such layer; returns their
    number."""
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def unpack_cpu_4bit_weights(model) -> None:
    """Undo that repacking in place: bitsandbytes' private ``bitsandbytes.functional.
    _convert_weight_packed_for_cpu_inverse(weight, quant_state)`` on every weight whose quant state has the
    (undocumented) ``packing_format_for_cpu`` set. Nothing to do for a bitsandbytes without CPU packing (or none)."""
    try:
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    except ImportError:
        return
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
            if getattr(module, "quant_state", None) is not None:
                module.quant_state = weight.quant_state
