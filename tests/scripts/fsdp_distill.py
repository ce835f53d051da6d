"""A tiny FSDP2 distillation run for ``torchrun`` (see tests/training/test_fsdp.py).

    torchrun --standalone --nproc_per_node 2 tests/scripts/fsdp_distill.py OUT_DIR

Every rank builds the same tiny teacher and student from fixed seeds and trains them with ``fully_shard=True``
(student and teacher sharded with FSDP2 over gloo), 4 steps with a checkpoint every 2, and saves the student with
``save_model``. Then a fresh trainer resumes from checkpoint-2 and trains to step 4 again. Each rank writes
``OUT_DIR/rank-{i}.json``: what it saw (parameter types, local shard sizes, losses of both runs). Then a LoRA
student (PEFT) is trained for 2 steps and saved as an adapter (``lora-rank-{i}.json``). The one-process references
are :func:`main` and :func:`main_lora` with ``fully_shard=False`` (called inside pytest).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the tiny-model helpers

import torch  # noqa: E402
from helpers import make_llama, make_tokenizer, prompt_completion  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer  # noqa: E402
from hf_distill.utils.device import end_distributed  # noqa: E402

STEPS = 4


def _trainer(out: Path, per_device_batch: int, fully_shard: bool, run: str, lora: bool = False, **overrides):
    tokenizer = make_tokenizer()
    student, teacher = make_llama(len(tokenizer), 32, 2, seed=1), make_llama(len(tokenizer), 64, 2, seed=2)
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    values = dict(
        output_dir=str(out / run), max_steps=STEPS, per_device_train_batch_size=per_device_batch, learning_rate=1e-2,
        report_to=[], logging_steps=1, save_strategy="steps", save_steps=2, seed=0, temperature=2.0, alpha=0.5,
        dataloader_num_workers=0, use_cpu=True, bf16=False, fully_shard=fully_shard,
    )
    config = DistillationConfig(**{**values, **overrides})
    return DistillationTrainer(student, config, train_dataset=prompt_completion(slice(0, 32)),
                               processing_class=tokenizer, teacher_model=teacher, peft_config=peft_config)


def _losses(trainer) -> list[float]:
    return [log["loss"] for log in trainer.state.log_history if "loss" in log]


def _types(model: torch.nn.Module) -> list[str]:
    return sorted({type(p).__name__ for p in model.parameters()})


def _local_numel(model: torch.nn.Module) -> int:
    from torch.distributed.tensor import DTensor

    return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters())


def main(out: Path, per_device_batch: int, fully_shard: bool = True) -> None:
    rank = int(os.environ.get("RANK", "0"))
    trainer = _trainer(out, per_device_batch, fully_shard, "run")
    trainer.train()
    trainer.save_model(str(out / "final"))
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    report = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "student_types": _types(trainer.model),
        "teacher_types": _types(trainer.teacher.unwrapped),
        "teacher_trainable": sum(p.requires_grad for p in trainer.teacher.unwrapped.parameters()),
        "student_wrapper": type(trainer.model_wrapped).__name__,
        "student_local_numel": _local_numel(trainer.model),
        "teacher_local_numel": _local_numel(trainer.teacher.unwrapped),
        "optimizer_local_numel": sum(_local_numel_of(state.get("exp_avg")) for state in optimizer.state.values()),
        "losses": _losses(trainer),
        "kd_losses": [log["kd_loss"] for log in trainer.state.log_history if "kd_loss" in log],
    }
    if fully_shard:  # resume from the first checkpoint with a fresh trainer: the same steps 3-4 again
        resumed = _trainer(out, per_device_batch, fully_shard, "run", output_dir=str(out / "resumed"))
        resumed.train(resume_from_checkpoint=str(out / "run" / "checkpoint-2"))
        resumed.save_model(str(out / "resumed_final"))
        report["resumed_losses"] = _losses(resumed)
    (out / f"rank-{rank}.json").write_text(json.dumps(report))


def _local_numel_of(tensor) -> int:
    from torch.distributed.tensor import DTensor

    if tensor is None:
        return 0
    return (tensor.to_local() if isinstance(tensor, DTensor) else tensor).numel()


def main_lora(out: Path, per_device_batch: int, fully_shard: bool = True) -> None:
    rank = int(os.environ.get("RANK", "0"))
    trainer = _trainer(out, per_device_batch, fully_shard, "lora", lora=True, max_steps=2, save_strategy="no")
    trainer.train()
    trainer.save_model(str(out / "lora_final"))
    report = {"rank": rank, "losses": _losses(trainer), "student_types": _types(trainer.model),
              "trainable": sum(p.requires_grad for p in trainer.model.parameters())}
    (out / f"lora-rank-{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), 4)
    main_lora(Path(sys.argv[1]), 4)  # in the same processes: one launch
    end_distributed()  # an open gloo group at exit sometimes aborts rank 0 after a finished run
