"""Checkpointing of trainable modules that are not the student: feature projectors, a co-distilled teacher.

They are kept out of ``trainer.model`` (so the published student is clean) and therefore out of the Trainer's own
checkpoint files. :func:`save_extra_modules` writes each of them as ``<name>.safetensors`` into every
``checkpoint-N`` directory (the trainer calls it beside ``optimizer.pt``, before ``trainer_state.json`` marks the
checkpoint complete); :func:`restore_extra_modules` loads them back, in place, on ``resume_from_checkpoint``.
Their optimizer state needs nothing extra: they are param groups of the Trainer's optimizer, saved in
``optimizer.pt``. :class:`ExtraModulesCallback` clips and zeroes their gradients.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import TrainerCallback

from hf_distill.utils.io import atomic_path


def save_module(module: nn.Module, path: str | os.PathLike) -> None:
    """Atomic write: a crash never leaves a half-written file under the final name. Tied tensors are handled."""
    with atomic_path(path) as tmp:
        save_model(module, str(tmp))


def restore_extra_modules(modules: dict[str, nn.Module], checkpoint_dir: str | os.PathLike) -> None:
    """Load every ``<name>.safetensors`` of ``checkpoint_dir`` into ``modules[name]`` (strict: all keys must match)."""
    for name, module in modules.items():
        path = Path(checkpoint_dir) / f"{name}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: this checkpoint was not written by a run with the same feature alignment / "
                "co-distillation settings. Resume with the settings it was trained with, or start a new run."
            )
        device = next(module.parameters()).device
        load_model(module, str(path), strict=True, device=str(device))


def save_extra_modules(modules: dict[str, nn.Module], checkpoint_dir: str | os.PathLike) -> None:
    for name, module in modules.items():
        save_module(module, Path(checkpoint_dir) / f"{name}.safetensors")


class ExtraModulesCallback(TrainerCallback):
    """Does for the extra modules' gradients what the Trainer does only for ``model``'s: clips them to
    ``max_grad_norm`` and zeroes them after each optimizer step (``model.zero_grad()`` does not reach them, so they
    would otherwise accumulate across steps)."""

    def __init__(self, modules: dict[str, nn.Module], max_grad_norm: float | None = None):
        self.modules = modules
        self.max_grad_norm = max_grad_norm

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.max_grad_norm:
            for module in self.modules.values():
                torch.nn.utils.clip_grad_norm_(module.parameters(), self.max_grad_norm)
        return control

    def on_optimizer_step(self, args, state, control, **kwargs):
        for module in self.modules.values():
            module.zero_grad(set_to_none=True)
        return control
