"""Moved to `hf_distill.models.shrink`; this path keeps working for one release (with a DeprecationWarning)."""

from hf_distill._compat import moved_module

__getattr__ = moved_module("hf_distill.shrink", "hf_distill.models.shrink")
