"""`hf-distill env`: the versions to paste into a bug report, as `trl env` prints them.

    hf-distill env
"""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from hf_distill.cli.parser import Parser

# distribution names, in the order a report lists them after hf-distill, Python, the platform and torch
LIBRARIES = ("transformers", "trl", "accelerate", "peft", "datasets", "bitsandbytes", "gguf", "huggingface_hub")


def _version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def _checkout_commit() -> str | None:
    """The git commit of a source checkout (an editable install), as `trl env` appends TRL's."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, str]:
    """Name -> version (or 'not installed'), with torch's CUDA and the accelerators it sees."""
    import torch

    import hf_distill

    commit = _checkout_commit()
    if torch.cuda.is_available():
        devices = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        cuda = f"available (CUDA {torch.version.cuda}): {devices}"
    else:
        cuda = f"not available (torch built with CUDA {torch.version.cuda})" if torch.version.cuda else "not available"
    info = {
        "hf_distill": f"{hf_distill.__version__}+{commit}" if commit else hf_distill.__version__,
        "Python": platform.python_version(),
        "Platform": platform.platform(),
        "torch": torch.__version__,
        "CUDA": cuda,
    }
    if torch.backends.mps.is_available():
        info["MPS"] = "available"
    return info | {name: _version(name) for name in LIBRARIES}


def parser() -> Parser:
    return Parser([], prog="hf-distill env", description="Print the versions to paste into a bug report.")


def main(argv: list[str] | None = None) -> int:
    parser().parse(sys.argv[1:] if argv is None else argv)
    lines = "\n".join(f"- {name}: {value}" for name, value in environment().items())
    print(f"\nCopy-paste the following information when reporting an issue:\n\n{lines}\n")
    return 0
