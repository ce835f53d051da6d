"""Models as objects: reaching inside them (introspect), building (build) and shrinking them (shrink), quantising them
and their adapters (quantization, adapters), GGUF files (gguf), and the real checkpoints the tests use (real)."""

from hf_distill.models.build import ModelSize, build_llama, count_parameters

__all__ = ["ModelSize", "build_llama", "count_parameters"]
