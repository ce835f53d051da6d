"""`SFTTrainer` with the data preparation of a drop-in trainer, shared by `DistillationTrainer` and the teacher-logit
cache collector: the cache is keyed on the examples training will see, so both must prepare data the same way."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase
from trl import SFTTrainer

from hf_distill._compat import set_trainer_signature_columns, skips_text_preparation
from hf_distill.data.chat import is_conversation, tokenize_conversations
from hf_distill.training.batch_checks import uses_own_collator


class PreparingSFTTrainer(SFTTrainer):
    """Tokenized data that comes with its own collator (a stock transformers script) is used as is, with the columns
    a plain `Trainer` keeps (attention_mask included); everything else is prepared by TRL as usual, except that
    ``messages`` conversations train on their assistant turns only, with any chat template (generation markers or
    not, see :mod:`hf_distill.data.chat`), unless ``args.assistant_only_loss`` is False (TRL's loss on the whole
    conversation). ``None`` (`DistillationConfig`'s default) and ``True`` both mean assistant turns only."""

    def __init__(self, model, args, data_collator=None, train_dataset=None, *positional, **kwargs):
        if uses_own_collator(data_collator, train_dataset):
            args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        self._assistant_only_loss = getattr(args, "assistant_only_loss", False)
        if not (self._assistant_only_loss is True and _prepares_conversations(args, train_dataset, kwargs)):
            super().__init__(model, args, data_collator, train_dataset, *positional, **kwargs)
            return
        args.assistant_only_loss = False  # TRL's own path would demand {% generation %} markers; ours does the work
        try:
            super().__init__(model, args, data_collator, train_dataset, *positional, **kwargs)
        finally:
            args.assistant_only_loss = True

    # Overrides of SFTTrainer's private methods (their signatures are checked in tests/test_compat.py).
    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        if (self._assistant_only_loss is not False and formatting_func is None
                and isinstance(processing_class, PreTrainedTokenizerBase) and is_conversation(next(iter(dataset), {}))):
            # input_ids + assistant_masks: TRL treats the data as tokenized and builds labels from the masks
            dataset = tokenize_conversations(dataset, processing_class, dataset_name, args.dataset_num_proc)
        return super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)

    def _set_signature_columns_if_needed(self):
        if skips_text_preparation(self):  # a plain Trainer's columns: the model's forward arguments
            return set_trainer_signature_columns(self)
        return super()._set_signature_columns_if_needed()


def _prepares_conversations(args, train_dataset, kwargs) -> bool:
    """Whether ``_prepare_dataset`` will see ``messages`` training data (not skipped, not reformatted)."""
    if train_dataset is None or kwargs.get("formatting_func") is not None:
        return False
    skipped = (args.dataset_kwargs or {}).get("skip_prepare_dataset")
    return not skipped and is_conversation(next(iter(train_dataset), {}))
