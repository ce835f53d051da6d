"""A tiny distillation run for ``accelerate launch`` (see tests/test_multiprocess.py).

    accelerate launch --config_file recipes/accelerate/ddp.yaml tests/scripts/ddp_distill.py OUT_DIR [BATCH] [--bf16]

Every rank builds the same tiny teacher and student from fixed seeds, trains a few steps, saves the student once
(``trainer.save_model``: main process only) and writes ``OUT_DIR/rank-{i}.json`` with what it saw: world size, the
logged losses, and a checksum of its final student weights, so the test can check that the ranks agree. With
``--bf16`` it then trains one more step with ``bf16=True`` in the same processes (no second launch) and adds the
dtypes one MLP of the student and of the teacher computed in, and that step's loss.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest's tiny-model helpers

import torch  # noqa: E402
from helpers import make_llama, make_tokenizer, prompt_completion  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer  # noqa: E402
from hf_distill.utils.device import end_distributed  # noqa: E402


def main(out: Path, per_device_batch: int, bf16: bool = False) -> None:
    tokenizer = make_tokenizer()
    student, teacher = make_llama(len(tokenizer), 32, 1, seed=1), make_llama(len(tokenizer), 64, 2, seed=2)
    saves, save_pretrained = out / "saves.txt", student.save_pretrained

    def recording_save(*args, **kwargs):  # who writes the student's weights, and how often
        with open(saves, "a") as file:
            file.write(f"{os.environ.get('RANK', '0')}\n")
        return save_pretrained(*args, **kwargs)

    student.save_pretrained = recording_save  # this instance only: the script also runs inside pytest
    config = DistillationConfig(
        output_dir=str(out / "run"), max_steps=3, per_device_train_batch_size=per_device_batch, learning_rate=1e-2,
        report_to=[], logging_steps=1, save_strategy="no", seed=0, temperature=2.0, alpha=0.5, dataloader_num_workers=0,
        use_cpu=True,  # gloo DDP; accelerate ignores FSDP on a CPU (recipes/accelerate/README.md)
        bf16=False,  # float32, to compare with one process exactly (with use_cpu, TRL's default would be bf16)
    )
    trainer = DistillationTrainer(student, config, train_dataset=prompt_completion(slice(0, 32)),
                                  processing_class=tokenizer, teacher_model=teacher)
    trainer.train()
    trainer.save_model(str(out / "final"))
    weights = torch.cat([p.detach().double().flatten() for p in trainer.model.parameters()])
    report = {
        "rank": trainer.args.process_index,
        "world_size": trainer.args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "teacher_wrapper": type(trainer.teacher.model).__name__,
        "student_wrapper": type(trainer.model_wrapped).__name__,
        "losses": [log["loss"] for log in trainer.state.log_history if "loss" in log],
        "kd_losses": [log["kd_loss"] for log in trainer.state.log_history if "kd_loss" in log],
        "weights_sum": weights.sum().item(),
        "weights_sq_sum": weights.square().sum().item(),
    }
    if bf16:
        report.update(bf16_step(out, per_device_batch))
    (out / f"rank-{report['rank']}.json").write_text(json.dumps(report))


def bf16_step(out: Path, per_device_batch: int) -> dict:
    """One ``bf16=True`` step: the dtypes layer 0's MLP of the student and of the teacher output, and the loss."""
    tokenizer = make_tokenizer()
    student, teacher = make_llama(len(tokenizer), 32, 1, seed=1), make_llama(len(tokenizer), 64, 2, seed=2)
    config = DistillationConfig(
        output_dir=str(out / "bf16"), max_steps=1, per_device_train_batch_size=per_device_batch, report_to=[],
        logging_steps=1, save_strategy="no", seed=0, dataloader_num_workers=0, use_cpu=True, bf16=True,
    )
    trainer = DistillationTrainer(student, config, train_dataset=prompt_completion(slice(0, 32)),
                                  processing_class=tokenizer, teacher_model=teacher)
    seen = {"student": set(), "teacher": set()}
    for name, model in (("student", student), ("teacher", teacher)):
        model.model.layers[0].mlp.register_forward_hook(
            lambda _module, _args, output, dtypes=seen[name]: dtypes.add(str(output.dtype))
        )
    trainer.train()
    return {"bf16_dtypes": {name: sorted(dtypes) for name, dtypes in seen.items()},
            "bf16_loss": trainer.state.log_history[0]["loss"]}


if __name__ == "__main__":
    args = [arg for arg in sys.argv[1:] if arg != "--bf16"]
    main(Path(args[0]), int(args[1]) if len(args) > 1 else 4, bf16="--bf16" in sys.argv)
    end_distributed()  # an open gloo group at exit sometimes aborts rank 0 after a finished run
