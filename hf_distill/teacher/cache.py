"""Moved to `hf_distill.cache` (reader, format, collator) and `hf_distill.utils.io`; this path keeps working for one release (with a DeprecationWarning)."""

from hf_distill._compat import moved_module

__getattr__ = moved_module("hf_distill.teacher.cache", "hf_distill.cache.reader", "hf_distill.cache.format",
                           "hf_distill.cache.collator", "hf_distill.utils.io")
