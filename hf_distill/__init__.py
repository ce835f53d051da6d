"""hf_distill: distil large language models into small ones with the Hugging Face Trainer."""

from hf_distill._compat import silence_bitsandbytes_kernel_note

silence_bitsandbytes_kernel_note()  # before anything below imports peft (and so bitsandbytes)

# ruff: noqa: E402

from hf_distill.cache.reader import TeacherCache
from hf_distill.cache.writer import collect_teacher_cache
from hf_distill.config import DistillationConfig
from hf_distill.losses import DIVERGENCES, LossSpec, fused_distillation_loss
from hf_distill.trainer import DistillationTrainer

__all__ = [
    "DIVERGENCES", "DistillationConfig", "DistillationTrainer", "LossSpec", "TeacherCache", "collect_teacher_cache",
    "fused_distillation_loss",
]
__version__ = "0.1.0"  # the one place it is written: pyproject.toml reads it (tool.setuptools.dynamic)
