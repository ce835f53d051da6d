"""`push_folder`: publish a distilled model folder to the Hugging Face Hub (the command, `hf-distill push DIR
--repo_id USER/NAME`, is `hf_distill.cli.push`).

Only safetensors weights, configs, tokenizer files, the model card and its plots are uploaded: pickled files
(``*.bin``, ``*.pt``, ``training_args.bin``, optimizer states) and Trainer checkpoints are never sent. The token
comes from ``HF_TOKEN`` or ``huggingface-cli login`` (never from a command-line flag, which would land in shell
history and process lists) and is only held in memory.
"""

from __future__ import annotations

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


def main(argv: list[str] | None = None) -> int:
    """Deprecated: `hf-distill push` is `hf_distill.cli.push.main` (this one goes in the next release)."""
    import warnings

    from hf_distill.cli.push import main as push_main

    warnings.warn("hf_distill.hub.main moved: use hf_distill.cli.push.main (hf_distill.hub.main goes in the next "
                  "release).", DeprecationWarning, stacklevel=2)
    return push_main(argv)
