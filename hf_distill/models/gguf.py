"""GGUF checkpoints as teachers and students: a ``.gguf`` file (or a folder plus ``gguf_file``) works wherever a model
path does.

transformers reads GGUF through the ``gguf`` package and dequantises every tensor to float32. The model it returns
refuses ``save_pretrained`` ("quantized with gguf and is not serializable") although nothing in it is quantised any
more, so we rebuild a plain model of the same config from its weights: it trains, shrinks, saves and pushes like any
other checkpoint, and its logits are the GGUF model's (tested).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from hf_distill.utils.io import atomic_dir

logger = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"


def gguf_reference(name_or_path: str | os.PathLike, gguf_file: str | None = None) -> tuple[str, str] | None:
    """``(folder, file name)`` when ``name_or_path`` names a GGUF checkpoint, else None.

    A GGUF checkpoint is a path ending in ``.gguf``, or a folder (or hub id) together with ``gguf_file``.
    """
    if gguf_file:
        return str(name_or_path), str(gguf_file)
    path = str(name_or_path)
    if path.lower().endswith(GGUF_SUFFIX):
        if not Path(path).is_file():
            raise FileNotFoundError(f"GGUF file {path!r} does not exist: pass the path of a .gguf file, or a folder "
                                    "and `gguf_file=NAME`.")
        return str(Path(path).parent), Path(path).name
    return None


def is_gguf(name_or_path: str | os.PathLike | None, gguf_file: str | None = None) -> bool:
    return name_or_path is not None and not isinstance(name_or_path, torch.nn.Module) and (
        gguf_file is not None or str(name_or_path).lower().endswith(GGUF_SUFFIX))


def load_gguf_model(folder: str, gguf_file: str, dtype: torch.dtype | str | None = None, **kwargs) -> PreTrainedModel:
    """A plain (serialisable) causal LM with the dequantised weights of ``folder/gguf_file``.

    ``dtype``: float32 (the dequantised values, default and for ``"auto"``), or a dtype to cast to afterwards.
    """
    _require_gguf_package()
    refused = sorted(set(kwargs) & {"quantization_config", "device_map", "load_in_8bit", "load_in_4bit"})
    if refused:
        raise ValueError(
            f"{', '.join(refused)} cannot be applied while reading a GGUF file (transformers dequantises it first). "
            f"Convert it once with `hf_distill.models.gguf.convert_gguf({os.path.join(folder, gguf_file)!r}, OUT_DIR)` and "
            "load OUT_DIR with those options."
        )
    kwargs.pop("use_safetensors", None)  # a GGUF file is neither safetensors nor pickle
    trust_remote_code = kwargs.pop("trust_remote_code", False)
    revision = kwargs.pop("revision", None)
    logger.warning("Loading %s: GGUF weights are dequantised to float32%s.", os.path.join(folder, gguf_file),
                   "" if dtype in (None, "auto", torch.float32) else f", then cast to {dtype}")
    loaded = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf_file, dtype=torch.float32, trust_remote_code=trust_remote_code, revision=revision,
        **kwargs,
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")  # the weights below are plain floats: nothing stays quantised
    config.name_or_path = os.path.join(folder, gguf_file)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    for name, buffer in loaded.named_buffers():  # non-persistent ones (rotary inv_freq) are not in the state dict
        owner, _, attr = name.rpartition(".")
        model.get_submodule(owner).register_buffer(attr, buffer, persistent=name in loaded.state_dict())
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.name_or_path = config._name_or_path
    del loaded
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    if isinstance(dtype, torch.dtype) and dtype != torch.float32:
        model = model.to(dtype)
    return model.eval()


def load_gguf_tokenizer(folder: str, gguf_file: str, **kwargs):
    _require_gguf_package()
    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, **kwargs)


def load_causal_lm(name_or_path: str | os.PathLike, gguf_file: str | None = None, **kwargs) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` that also takes a ``.gguf`` path (or ``gguf_file=``)."""
    reference = gguf_reference(name_or_path, gguf_file)
    if reference is not None:
        return load_gguf_model(*reference, dtype=kwargs.pop("dtype", None), **kwargs)
    return AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs)


def load_tokenizer(name_or_path: str | os.PathLike, gguf_file: str | None = None, **kwargs):
    """``AutoTokenizer.from_pretrained`` that also reads the tokenizer inside a ``.gguf`` file."""
    reference = gguf_reference(name_or_path, gguf_file)
    if reference is not None:
        return load_gguf_tokenizer(*reference, **kwargs)
    return AutoTokenizer.from_pretrained(str(name_or_path), **kwargs)


def convert_gguf(path: str | os.PathLike, output_dir: str | os.PathLike, gguf_file: str | None = None,
                 dtype: torch.dtype = torch.float32) -> Path:
    """Write the GGUF checkpoint at ``path`` as a safetensors folder (model + tokenizer) at ``output_dir``.

    Written to a temporary sibling folder and renamed into place, so an interrupted conversion leaves nothing that
    looks finished.
    """
    reference = gguf_reference(path, gguf_file)
    if reference is None:
        raise ValueError(f"{str(path)!r} is not a GGUF checkpoint: pass a .gguf file, or a folder and gguf_file=NAME.")
    model = load_gguf_model(*reference, dtype=dtype)
    tokenizer = load_gguf_tokenizer(*reference)
    with atomic_dir(output_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return Path(output_dir)


def _require_gguf_package() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ImportError("Reading a .gguf checkpoint needs the `gguf` package: pip install gguf") from None
