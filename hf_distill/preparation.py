"""`SFTTrainer` with the data preparation of a drop-in trainer, shared by `DistillationTrainer` and the teacher-logit
cache collector: the cache is keyed on the examples training will see, so both must prepare data the same way."""

from __future__ import annotations

from trl import SFTTrainer

from hf_distill.batch_checks import uses_own_collator


class PreparingSFTTrainer(SFTTrainer):
    """Tokenized data that comes with its own collator (a stock transformers script) is used as is, with the columns
    a plain `Trainer` keeps (attention_mask included); everything else is prepared by TRL as usual."""

    def __init__(self, model, args, data_collator=None, train_dataset=None, *positional, **kwargs):
        if uses_own_collator(data_collator, train_dataset):
            args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        super().__init__(model, args, data_collator, train_dataset, *positional, **kwargs)

    def _set_signature_columns_if_needed(self):
        if self._skip_prepare_dataset and not self._is_vision_dataset:
            return super(SFTTrainer, self)._set_signature_columns_if_needed()
        return super()._set_signature_columns_if_needed()
