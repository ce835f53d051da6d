"""`hf-distill serve`: llama.cpp's OpenAI-compatible server (``python -m llama_cpp.server``) for a student.

    hf-distill serve stages/s2/model --quant q4_k_m --port 8000   # exports the GGUF first if it is not there
    hf-distill serve s2.q4_k_m.gguf
    curl http://127.0.0.1:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "2+2?"}]}'

Then measure it with ``hf-distill bench-serve http://127.0.0.1:8000/v1 --card stages/s2/model``.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hf_distill.cli.parser import Parser
from hf_distill.deploy.gguf_export import QUANT_TYPES


@dataclass
class ServeArguments:
    model: str | None = field(default=None, metadata={"help": "A .gguf file, or a student folder (its "
                                                              "<name>.<quant>.gguf, exported first if missing); "
                                                              "also positional."})
    quant: str = field(default="q8_0", metadata={"help": "GGUF type to serve (and export) for a folder.",
                                                 "choices": list(QUANT_TYPES)})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (0.0.0.0: every interface)."})
    port: int = field(default=8000, metadata={"help": "Port to listen on."})
    n_ctx: int = field(default=2048, metadata={"help": "Context length (prompt + answer) the server allocates."})
    n_threads: int | None = field(default=None, metadata={"help": "CPU threads (default: llama.cpp's choice)."})
    print_command: bool = field(default=False, metadata={"help": "Print the server command instead of running "
                                                                 "it."})


def parser() -> Parser:
    return Parser(ServeArguments, positional="model", prog="hf-distill serve",
                  description="Serve a student (a GGUF file, or a folder exported to one first) with llama.cpp's "
                  "OpenAI-compatible server: /v1/chat/completions, /v1/completions, /v1/models.")


def gguf_for(model: str, quant: str) -> Path:
    """The GGUF file to serve for ``model``: itself, or the folder's export of type ``quant`` (made if missing)."""
    path = Path(model)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"{model} does not exist: export it with `hf-distill export STUDENT --gguf "
                                    f"{model}`")
        return path
    from hf_distill.deploy.gguf_export import default_gguf_path, export_gguf
    from hf_distill.deploy.report import record_export, update_card

    out = default_gguf_path(path, quant)
    if not out.is_file():
        print(f"Exporting {model} to {out} ({quant}) first", file=sys.stderr)
        export_gguf(path, out, quant)
        update_card(path / "README.md", record_export(path, out, quant))
    return out


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    (args,) = cli.parse(sys.argv[1:] if argv is None else argv)
    if args.model is None:
        cli.error("a student is required: hf-distill serve STUDENT_FOLDER_OR_GGUF [--port 8000]")
    from hf_distill.deploy.server import server_command

    command = server_command(gguf_for(args.model, args.quant), host=args.host, port=args.port, n_ctx=args.n_ctx,
                             n_threads=args.n_threads)
    if args.print_command:
        print(shlex.join(command))
        return 0
    from hf_distill.deploy.gguf_export import require_llama_cpp

    require_llama_cpp("hf-distill serve")
    print(f"Serving on http://{args.host}:{args.port}/v1 (Ctrl-C stops it)", file=sys.stderr)
    sys.stdout.flush()
    os.execv(command[0], command)  # the server is the process: signals and exit status are its own
