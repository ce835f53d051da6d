"""Moved to `hf_distill.models.quantization`; this path keeps working for one release (with a DeprecationWarning)."""

from hf_distill._compat import moved_module

__getattr__ = moved_module("hf_distill.quantization", "hf_distill.models.quantization")
