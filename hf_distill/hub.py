"""`hf-distill push DIR --repo-id USER/NAME`: publish a distilled model folder to the Hugging Face Hub.

Only safetensors weights, configs, tokenizer files, the model card and its plots are uploaded: pickled files
(``*.bin``, ``*.pt``, ``training_args.bin``, optimizer states) and Trainer checkpoints are never sent. The token
comes from ``HF_TOKEN`` or ``huggingface-cli login`` (never from a command-line flag, which would land in shell
history and process lists) and is only held in memory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from huggingface_hub import HfApi

# pickles and training state: unsafe to load (pickle) or useless to a user of the model
IGNORE = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt", "checkpoint-*/**", "run/**", "optimizer*", "scheduler*",
          "rng_state*", ".*", "**/.*"]


def push_folder(folder: str | Path, repo_id: str, token: str | None = None, private: bool | None = None,
                revision: str | None = None, commit_message: str | None = None) -> str:
    """Create ``repo_id`` if needed and upload ``folder``'s safetensors model; return the commit URL."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a directory")
    if not any(folder.glob("*.safetensors")):
        raise ValueError(f"{folder} holds no *.safetensors weights; save with `save_pretrained(..., "
                         "safe_serialization=True)` (pickled .bin weights are never pushed)")
    if not (folder / "README.md").exists():
        raise ValueError(f"{folder} has no README.md model card; `DistillationTrainer.save_model` (`hf-distill "
                         "train`) and `hf-distill cascade` write one")
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo.repo_id, repo_type="model", revision=revision,
                               ignore_patterns=IGNORE, commit_message=commit_message or f"Upload {folder.name}")
    return commit.commit_url


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hf-distill push",
        description="Publish a model folder (safetensors weights, config, tokenizer, README.md card, plots) to the "
        "Hugging Face Hub; pickles and checkpoints are never sent. The token comes from HF_TOKEN or "
        "`huggingface-cli login`.",
    )
    parser.add_argument("folder", help="a model directory (e.g. a cascade's stages/<name>/model)")
    parser.add_argument("--repo-id", required=True, help="USER/NAME or ORG/NAME on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to push to (default: main)")
    parser.add_argument("--message", default=None, help="commit message")
    args = parser.parse_args(argv)
    url = push_folder(args.folder, args.repo_id, private=args.private or None, revision=args.revision,
                      commit_message=args.message)
    print(f"Pushed {args.folder} to {url}")
    return 0
