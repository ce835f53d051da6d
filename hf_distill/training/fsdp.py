"""FSDP2 inside `DistillationTrainer` (``fully_shard=True``): the student and a live teacher sharded across processes.

Why the trainer shards itself instead of leaving it to accelerate: on CPU processes (gloo), accelerate 1.15 keeps
``MULTI_CPU`` with ``use_cpu`` and silently drops its FSDP plugin, and `TrainingArguments` refuses ``fsdp=`` there
("Using fsdp only works in distributed training"). PyTorch's FSDP2 itself (`torch.distributed.fsdp.fully_shard`)
runs on any device mesh, gloo included, so with ``fully_shard=True`` the trainer applies it before the optimizer is
built, the way torchtitan does:

* **student**: one FSDP unit per decoder layer (the model's ``_no_split_modules``) plus the root (embeddings, final
  norm, ``lm_head``). Parameters, gradients and AdamW state are ``DTensor`` shards (1/N per rank). The Trainer is
  told the model already owns its gradient reduction (:func:`hf_distill._compat.mark_model_sharded`), so accelerate
  does not wrap it in DDP. The loss runs inside the root's forward (the trainer's forward redirection), where FSDP has
  gathered the root's parameters: the chunked KD loss reads the full ``lm_head`` weight there, and its gradient is
  reduce-scattered to the shards after backward. Per rank that costs one full head (and its gradient) during the
  step, what FSDP's root unit holds anyway.
* **teacher**: sharded the same way, frozen (no gradients, no optimizer state), ``reshard_after_forward=True`` for
  the root as well, so between steps each rank holds 1/N of it. Its head is gathered once per step
  (``DTensor.full_tensor``) for the chunked loss and freed with the batch's signal.
* **saving**: ``save_model`` gathers a full state dict to rank 0 (``get_model_state_dict(full_state_dict=True,
  cpu_offload=True)``), which writes a plain ``from_pretrained`` model once. Checkpoints add a sharded
  ``torch.distributed.checkpoint`` (DCP) copy of the model and optimizer (``fsdp_sharded/``, every rank writes its
  shards), which is what resuming loads.

Not supported with ``fully_shard`` (refused by :func:`check_fully_shard_settings`, naming the fix): modules trained
beside the student (feature alignment, co-distillation), cross-tokenizer and on-policy distillation, a quantised
teacher or one on its own device, ``push_to_hub`` and ``load_best_model_at_end``.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from hf_distill._compat import mark_model_sharded
from hf_distill.losses.chunked import autocast_head
from hf_distill.losses.targets import DenseTeacherSignal
from hf_distill.models.introspect import (
    final_output,
    forward_outputs,
    loss_rows,
    model_inputs,
    output_head,
    unwrap_peft,
)
from hf_distill.teacher.live import LiveTeacher

SHARDED_CHECKPOINT = "fsdp_sharded"  # the DCP folder inside checkpoint-N (model + optimizer shards)
_SCHEDULER = "scheduler.pt"  # transformers.trainer.SCHEDULER_NAME


def check_fully_shard_settings(config) -> None:
    """Refuse, in ``DistillationConfig.__post_init__``, what ``fully_shard=True`` does not shard or was never run."""
    if not getattr(config, "fully_shard", False):
        return
    refused = {
        "fsdp": "accelerate's / the Trainer's FSDP (`fsdp=`, recipes/accelerate/fsdp.yaml) shards the model itself: "
                "keep one of the two",
        "deepspeed": "DeepSpeed partitions the model itself: keep one of DeepSpeed and fully_shard",
        "feature_weight": "feature alignment trains projectors beside the student, which are not sharded",
        "attention_weight": "attention transfer needs the teacher's attention maps, not collected under fully_shard",
        "co_distill": "co-distillation trains the teacher, which fully_shard shards for inference only",
        "cross_tokenizer": "cross-tokenizer distillation runs its own objective, not run under fully_shard",
        "lmbda": "on-policy generation was not run with a sharded student",
        "seq_kd": "sequence-level KD generates with the teacher, not run with a sharded teacher",
        "teacher_quantization": "bitsandbytes-quantised weights cannot be sharded as DTensors",
        "teacher_device": "a sharded teacher lives on every rank's own device",
        "push_to_hub": "pushing is not wired to the gathered save: push the saved folder with `hf-distill push`",
        "load_best_model_at_end": "loading the best checkpoint back is not wired to sharded weights",
    }
    for name, why in refused.items():
        if getattr(config, name, None):
            raise ValueError(f"fully_shard=True with {name}={getattr(config, name)!r}: {why}. Unset {name} or "
                             "fully_shard.")


def _require_process_group() -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("fully_shard=True shards across the processes of a launch, but no process group is "
                           "running: start the script with `torchrun --nproc_per_node N` or `accelerate launch "
                           "--config_file recipes/accelerate/ddp.yaml` (with use_cpu=True on a CPU), or drop "
                           "fully_shard for one process.")
    return dist.get_world_size()


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP shards one by one: those whose class the model names in ``_no_split_modules`` (what accelerate's
    ``TRANSFORMER_BASED_WRAP`` uses), e.g. ``LlamaDecoderLayer``."""
    names = set(getattr(unwrap_peft(model), "_no_split_modules", None) or [])
    layers = [module for module in model.modules() if type(module).__name__ in names]
    if not layers:
        raise ValueError(f"fully_shard: {type(unwrap_peft(model)).__name__} names no decoder-layer class in "
                         "`_no_split_modules`, so it cannot be sharded layer by layer; drop fully_shard.")
    return layers


def shard(model: nn.Module, device: torch.device, reshard_root: bool | None = None) -> nn.Module:
    """Apply ``fully_shard`` to every decoder layer, then to ``model`` (the root), in place; returns ``model``.

    ``reshard_root=None``: FSDP's default, the root keeps its parameters gathered from forward to backward (training);
    ``True`` frees them after each forward (an inference-only teacher)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (_require_process_group(),))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_root)
    return model


def shard_student(trainer) -> None:
    """Shard ``trainer.model`` before the optimizer is built, and keep accelerate from wrapping it in DDP."""
    shard(trainer.model, trainer.accelerator.device)
    trainer.model_wrapped = trainer.model
    mark_model_sharded(trainer)


def full_tensor(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A ``DTensor`` shard gathered into a plain tensor of its own (a plain tensor unchanged)."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


class ShardedTeacher(LiveTeacher):
    """A live teacher whose layers and root are FSDP2 units: every forward goes through the root (so FSDP gathers
    the embeddings and each layer in turn), and the head for the chunked loss is gathered per step."""

    def outputs(self, inputs: dict, **kwargs):
        batch = {key: value.to(self.device) for key, value in model_inputs(inputs).items()}
        with self._precision():  # the backbone runs inside the root's forward, under its FSDP hooks
            return self._redirect(
                self.model, self.unwrapped, forward_outputs, self.unwrapped, batch, self.use_head, **kwargs
            )

    @torch.no_grad()
    def signal(self, inputs: dict, loss_mask: torch.Tensor, vocab_size: int, output_device: torch.device,
               states: torch.Tensor | None = None) -> DenseTeacherSignal:
        if states is None:
            states = final_output(self.outputs(inputs), self.use_head)
        states = loss_rows(states, loss_mask)  # (N, H) or (N, V)
        weight, bias = output_head(self.unwrapped) if self.use_head else (None, None)
        weight, bias = full_tensor(weight), full_tensor(bias)  # (V, H): the root was resharded after forward
        if self.follows_autocast():
            weight, bias = autocast_head(weight, bias)
        return DenseTeacherSignal(states, vocab_size, weight, bias, output_device)


def shard_teacher(teacher: nn.Module, device: torch.device) -> ShardedTeacher:
    teacher.to(device)
    return ShardedTeacher(shard(teacher, device, reshard_root=True))


# --- saving and resuming -----------------------------------------------------------------------------------------


def _plain_optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every rank must call it (an all-gather per tensor); rank 0 gets the full CPU state dict, others ``{}``."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_full_model(trainer, output_dir: str) -> None:
    """The student as a plain model (``from_pretrained`` loads it, no FSDP needed), written once by rank 0."""
    state_dict = full_state_dict(trainer.model)
    if trainer.args.should_save:
        trainer._save(output_dir, state_dict=state_dict)
    trainer.accelerator.wait_for_everyone()


def save_sharded_checkpoint(trainer, output_dir: str) -> None:
    """Model and optimizer shards with DCP (each rank writes its own), and the scheduler from rank 0."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(trainer.model, _plain_optimizer(trainer.optimizer))
    dcp.save({"model": model_state, "optimizer": optimizer_state},
             checkpoint_id=os.path.join(output_dir, SHARDED_CHECKPOINT))
    if trainer.args.should_save and trainer.lr_scheduler is not None:
        torch.save(trainer.lr_scheduler.state_dict(), os.path.join(output_dir, _SCHEDULER))


def load_sharded_checkpoint(trainer, checkpoint: str) -> None:
    """Resume model, optimizer and scheduler from :func:`save_sharded_checkpoint`'s files (each rank reads its
    shards; another number of ranks works too: DCP reshards on load)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    folder = os.path.join(checkpoint, SHARDED_CHECKPOINT)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{checkpoint} has no {SHARDED_CHECKPOINT}/ (the sharded model and optimizer that "
                                "fully_shard checkpoints write): resume from a checkpoint saved with fully_shard=True "
                                "and save_only_model=False, or start from its weights with `model_name_or_path`.")
    optimizer = _plain_optimizer(trainer.optimizer)
    model_state, optimizer_state = get_state_dict(trainer.model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=folder)
    set_state_dict(trainer.model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    scheduler = os.path.join(checkpoint, _SCHEDULER)
    if trainer.lr_scheduler is not None and os.path.isfile(scheduler):
        trainer.lr_scheduler.load_state_dict(torch.load(scheduler, weights_only=True))
