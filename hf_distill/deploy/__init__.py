"""From student to device: GGUF export with llama.cpp's converter (`gguf_export`), llama.cpp's OpenAI-compatible
server (`server`), latency measured with streamed requests (`bench`), the card's Deployment table (`report`), and
whether the file still answers like the student, run by transformers or by llama.cpp itself (`roundtrip`, imported
from its module: it needs torch)."""

from hf_distill.deploy.bench import LevelResult, bench_serve
from hf_distill.deploy.gguf_export import QUANT_TYPES, export_gguf, quantize_gguf
from hf_distill.deploy.report import (
           deployment_table,
           load_deployment,
           record_export,
           record_serving,
           update_card,
)
from hf_distill.deploy.server import serving

__all__ = ["QUANT_TYPES", "LevelResult", "bench_serve", "deployment_table", "export_gguf", "load_deployment",
           "quantize_gguf", "record_export", "record_serving", "serving", "update_card"]
