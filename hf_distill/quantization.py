"""Moved to `hf_distill.models.quantization` (and `hf_distill.models.adapters`: `describe_adapter`, `merge_adapters`);
this path keeps working for one release (with a DeprecationWarning)."""

from hf_distill._compat import moved_module

__getattr__ = moved_module("hf_distill.quantization", "hf_distill.models.quantization", "hf_distill.models.adapters")
