"""A live teacher: a frozen causal LM run next to the student, yielding dense signals.

The teacher is never part of ``trainer.model``, so ``save_model``, checkpoints and ``push_to_hub`` hold the student
only. It runs in eval mode under ``no_grad`` and may sit on another device or in another dtype than the student.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from hf_distill._compat import forward_redirection
from hf_distill.losses.chunked import autocast_dtype, autocast_head
from hf_distill.losses.targets import DenseTeacherSignal
from hf_distill.models.gguf import is_gguf, load_causal_lm, load_tokenizer
from hf_distill.models.introspect import (
    final_output,
    forward_outputs,
    has_plain_output_head,
    loss_rows,
    model_inputs,
    output_head,
)
from hf_distill.models.quantization import quantization_mode, with_quantization
from hf_distill.utils.device import resolve_dtype as _resolve_dtype


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype | str | None:
    """:func:`hf_distill.utils.device.resolve_dtype`, its error naming the teacher's dtype."""
    return _resolve_dtype(name, what="teacher dtype")


def load_teacher(
    teacher: str | os.PathLike | nn.Module,
    dtype: str | torch.dtype | None = None,
    init_kwargs: dict | None = None,
    trust_remote_code: bool = False,
    quantization: str | None = None,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Load a teacher from a local path or hub id (or take a model), then freeze it.

    ``quantization`` ("8bit"/"4bit") loads it with bitsandbytes onto ``device`` (default: the current accelerator,
    else the CPU), checked first by :mod:`hf_distill.models.quantization`.
    """
    dtype = resolve_dtype(dtype)
    if isinstance(teacher, (str, os.PathLike)):
        kwargs = dict(init_kwargs or {})
        kwargs.setdefault("dtype", dtype or "auto")
        kwargs.setdefault("trust_remote_code", trust_remote_code)
        kwargs.setdefault("use_safetensors", True)  # never unpickle a downloaded .bin
        try:
            if is_gguf(teacher, kwargs.get("gguf_file")):
                if quantization is not None:
                    raise ValueError(f"teacher_quantization={quantization!r} cannot be applied to the GGUF file "
                                     f"{str(teacher)!r}: convert it first (hf_distill.models.gguf.convert_gguf) and load "
                                     "the converted folder, or drop teacher_quantization.")
                teacher = load_causal_lm(str(teacher), **kwargs)  # dequantised to float32, then `dtype`
            else:
                kwargs = with_quantization(str(teacher), kwargs, quantization, dtype, device)
                teacher = AutoModelForCausalLM.from_pretrained(str(teacher), **kwargs)
        except OSError as error:
            raise OSError(
                f"Could not load the teacher from {str(teacher)!r}: {error}. Pass a local directory written by "
                "`save_pretrained`, a hub id you can reach, or an instantiated model (`teacher_model=model`). Weights "
                "are read from safetensors only; for a checkpoint with pickled .bin weights you trust, set "
                "teacher_model_init_kwargs={'use_safetensors': False}."
            ) from error
    elif quantization is not None:
        raise ValueError(
            f"teacher_quantization={quantization!r} is applied while loading, so it needs the teacher as a path or hub "
            "id (`teacher_model='path'` or `teacher_model_name_or_path`). For a model object, load it quantised "
            "yourself: from_pretrained(..., quantization_config=hf_distill.models.quantization.quantization_config(mode))."
        )
    elif isinstance(dtype, torch.dtype):
        teacher = teacher.to(dtype)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def load_teacher_tokenizer(teacher: str | os.PathLike | nn.Module) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved beside a teacher checkpoint, if there is one (used to check it matches the student's)."""
    source = teacher if isinstance(teacher, (str, os.PathLike)) else getattr(teacher, "name_or_path", None)
    if source and is_gguf(source) and Path(source).is_file():
        return load_tokenizer(str(source))  # the tokenizer inside the GGUF file
    if not source or not Path(source).is_dir():
        return None
    try:
        return AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError):
        return None


class LiveTeacher:
    """Runs the teacher on a student batch and returns its signal at the tokens that carry loss."""

    def __init__(self, model: nn.Module, unwrapped: nn.Module | None = None, device: torch.device | None = None):
        self.model = model  # possibly wrapped by DeepSpeed/FSDP for inference
        self.unwrapped = unwrapped if unwrapped is not None else model
        self.device = device or next(self.unwrapped.parameters()).device
        self.use_head = has_plain_output_head(self.unwrapped)
        self._redirect = forward_redirection()

    def follows_autocast(self) -> bool:
        """Whether the teacher runs under the caller's autocast on its device (the trainer's bf16/fp16).

        A quantised teacher does not: bitsandbytes computes in its own compute dtype. A co-trained (co_distill) one
        does, like the student. A frozen one does when its weights are float32 under bfloat16 autocast, or already in
        the autocast dtype; a float32 or bfloat16 teacher is never run in float16, whose range overflows on the
        activations of many bfloat16-trained models (NonFiniteTeacherError): ``teacher_dtype='float16'`` opts in.
        """
        dtype = autocast_dtype(self.device)
        if dtype is None or quantization_mode(self.unwrapped) is not None:
            return False
        params = list(self.unwrapped.parameters())
        if any(p.requires_grad for p in params):
            return True
        weights = next((p.dtype for p in params if p.is_floating_point()), dtype)
        return weights == dtype or (dtype == torch.bfloat16 and weights == torch.float32)

    def _precision(self) -> contextlib.AbstractContextManager:
        if autocast_dtype(self.device) is None or self.follows_autocast():
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, enabled=False)  # the teacher's own dtype

    def outputs(self, inputs: dict, **kwargs):
        """The teacher's forward outputs on a student batch, in the caller's grad mode (``kwargs`` such as
        ``output_hidden_states=True`` go to the forward) and under its autocast where :meth:`follows_autocast`.
        Final states: ``final_output(outputs, self.use_head)``."""
        batch = {key: value.to(self.device) for key, value in model_inputs(inputs).items()}
        with self._precision():
            if self.model is self.unwrapped:
                return forward_outputs(self.model, batch, self.use_head, **kwargs)
            # route through the wrapper so sharded parameters are gathered
            return self._redirect(
                self.model, self.unwrapped, forward_outputs, self.unwrapped, batch, self.use_head, **kwargs
            )

    @torch.no_grad()
    def signal(
        self, inputs: dict, loss_mask: torch.Tensor, vocab_size: int, output_device: torch.device,
        states: torch.Tensor | None = None,
    ) -> DenseTeacherSignal:
        """``loss_mask`` is ``(B, T-1)``: True where the next-token label at position t+1 carries loss.
        ``states``: the teacher's final states (or logits), when the caller already ran :meth:`outputs`."""
        if states is None:
            states = final_output(self.outputs(inputs), self.use_head)
        states = loss_rows(states, loss_mask)  # (N, H) or (N, V)
        weight, bias = output_head(self.unwrapped) if self.use_head else (None, None)
        if self.follows_autocast():  # its lm_head projects in the autocast dtype too, chunk by chunk
            weight, bias = autocast_head(weight, bias)
        return DenseTeacherSignal(states, vocab_size, weight, bias, output_device)
