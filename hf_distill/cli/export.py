"""`hf-distill export`: a student folder as a GGUF file for llama.cpp / Ollama / LM Studio (`hf_distill.deploy`).

    hf-distill export stages/s2/model --gguf s2.q4_k_m.gguf --quant q4_k_m
    hf-distill export stages/s2/model --quant q8_0 --check 4      # and greedy agreement with the float model

The tokenizer and chat template go inside the file. Without ``--gguf`` the file goes into the student's folder
(``<name>.<quant>.gguf``); its size is noted in ``deployment.json`` and the card's Deployment table.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field

from hf_distill.cli.parser import Parser
from hf_distill.deploy.gguf_export import QUANT_TYPES


@dataclass
class ExportArguments:
    model: str | None = field(default=None, metadata={"help": "The student folder (safetensors + tokenizer); also "
                                                              "positional."})
    gguf: str | None = field(default=None, metadata={"help": "The GGUF file to write (default: inside the student "
                                                             "folder, <name>.<quant>.gguf)."})
    quant: str = field(default="q8_0", metadata={"help": "GGUF type: f16 (lossless), q8_0 (half of f16), q4_k_m "
                                                         "(a quarter), or another llama.cpp type.",
                                                 "choices": list(QUANT_TYPES)})
    pre_tokenizer: str | None = field(default=None, metadata={"help": "llama.cpp's name for the tokenizer's "
                                                                      "splitting rule, only needed when llama.cpp "
                                                                      "does not recognise the tokenizer and it is not "
                                                                      "a plain byte-level BPE (e.g. gpt-2, llama3)."})
    check: int = field(default=0, metadata={"help": "Compare the file's greedy answers with the float student's on "
                                                    "this many test prompts (0: skip)."})
    check_engine: str = field(default="both", metadata={
        "help": "What runs the file for --check: transformers (its gguf_file= loader, dequantised: what the weights "
                "lost), llama.cpp (the engine users run: also rounds activations for quantised types), or both.",
        "choices": ["transformers", "llama.cpp", "both"]})
    card: bool = field(default=True, metadata={"help": "Note the file in the student's deployment.json and card."})


def parser() -> Parser:
    return Parser(ExportArguments, positional="model", prog="hf-distill export",
                  description="Write a student as one GGUF file (weights, tokenizer, chat template) with llama.cpp's "
                  "converter; k-quants (q4_k_m...) are requantised by llama.cpp itself.")


def check_prompts(tokenizer, count: int) -> list[str]:
    """``count`` held-out problems of the embedded task, as the student's chat prompts."""
    from hf_distill.data.arithmetic import make_arithmetic_dataset
    from hf_distill.evaluation.generate import chat_prompts

    questions = make_arithmetic_dataset(n_train=0, n_test=count, seed=1)["test"]["question"]
    return chat_prompts(tokenizer, questions[:count])


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    (args,) = cli.parse(sys.argv[1:] if argv is None else argv)
    if args.model is None:
        cli.error("a student folder is required: hf-distill export STUDENT --gguf OUT.gguf --quant q8_0")
    from hf_distill.deploy.gguf_export import default_gguf_path, export_gguf
    from hf_distill.deploy.report import record_export, update_card

    out = export_gguf(args.model, args.gguf or default_gguf_path(args.model, args.quant), args.quant,
                      pre_tokenizer=args.pre_tokenizer)
    print(f"Wrote {out} ({args.quant}, {out.stat().st_size / 1e6:.1f} MB)")
    if args.card:
        from pathlib import Path

        update_card(Path(args.model) / "README.md", record_export(args.model, out, args.quant))
    if args.check:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from hf_distill.deploy.roundtrip import gguf_agreement

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model).eval()
        engines = ["transformers", "llama.cpp"] if args.check_engine == "both" else [args.check_engine]
        if args.check_engine == "both" and importlib.util.find_spec("llama_cpp") is None:
            print("(llama-cpp-python is not installed: agreement by transformers' reload only)")
            engines = ["transformers"]
        for engine in engines:
            result = gguf_agreement(model, tokenizer, out, check_prompts(tokenizer, args.check), engine=engine)
            print(f"Greedy agreement with the float student on {result.prompts} prompts ({engine}): "
                  f"{result.exact:.0%} identical answers, {result.token:.0%} of tokens before the first difference, "
                  f"{result.forced:.0%} of tokens the same when fed the float student's answer.")
    return 0
