"""Reasoning-trace distillation: scaffold a teacher, sample its step-by-step traces, keep the verified ones, train.

* :mod:`~hf_distill.traces.templates`: prompts that ask the teacher to reason and end with ``#### answer``.
* :func:`collect_traces` (``hf-distill traces``): batched sampling, answer verification (rejection sampling),
  de-duplication, a resumable ``datasets`` output with provenance columns.
* :class:`TraceCollator`: prompt-masked hard-label batches, usable with logit KD in the same run.
"""

from hf_distill.traces.collator import TraceCollator
from hf_distill.traces.collect import (
    PROVENANCE_COLUMNS,
    TraceManifestMismatch,
    collect_traces,
)
from hf_distill.traces.config import TraceConfig
from hf_distill.traces.templates import TEMPLATES, PromptTemplate, get_template

__all__ = [
    "PROVENANCE_COLUMNS", "TEMPLATES", "PromptTemplate", "TraceCollator", "TraceConfig", "TraceManifestMismatch",
    "collect_traces", "get_template",
]
