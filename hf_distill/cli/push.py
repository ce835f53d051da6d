"""`hf-distill push`: publish a distilled model folder to the Hugging Face Hub (`hf_distill.hub.push_folder`).

    hf-distill push stages/s2/model --repo_id USER/NAME [--private] [--revision BRANCH] [--message TEXT]

Only safetensors weights, configs, tokenizer files, the model card and its plots are uploaded; pickles and Trainer
checkpoints never are. The token comes from ``HF_TOKEN`` or ``huggingface-cli login``, never from a flag (which would
land in shell history and process lists).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from hf_distill.cli.parser import Parser


@dataclass
class PushArguments:
    repo_id: str = field(metadata={"help": "USER/NAME or ORG/NAME on the Hub."})
    folder: str | None = field(default=None, metadata={"help": "A model directory (e.g. a cascade's "
                                                                "stages/<name>/model); also positional."})
    private: bool = field(default=False, metadata={"help": "Create the repository as private."})
    revision: str | None = field(default=None, metadata={"help": "Branch to push to (default: main)."})
    message: str | None = field(default=None, metadata={"help": "Commit message."})


def parser() -> Parser:
    return Parser(PushArguments, positional="folder", prog="hf-distill push",
                  description="Publish a model folder (safetensors weights, config, tokenizer, README.md card, plots) "
                  "to the Hugging Face Hub; pickles and checkpoints are never sent. The token comes from HF_TOKEN or "
                  "`huggingface-cli login`.")


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    (args,) = cli.parse(sys.argv[1:] if argv is None else argv)
    if args.folder is None:
        cli.error("a model folder is required: hf-distill push FOLDER --repo_id USER/NAME")
    from hf_distill.hub import push_folder

    url = push_folder(args.folder, args.repo_id, private=args.private or None, revision=args.revision,
                      commit_message=args.message)
    print(f"Pushed {args.folder} to {url}")
    return 0
