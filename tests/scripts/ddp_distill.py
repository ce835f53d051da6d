"""A tiny distillation run for ``accelerate launch`` (see tests/test_multiprocess.py).

    accelerate launch --config_file recipes/accelerate/ddp.yaml --cpu tests/scripts/ddp_distill.py OUT_DIR [BATCH]

Every rank builds the same tiny teacher and student from fixed seeds, trains a few steps, saves the student once
(``trainer.save_model``: main process only) and writes ``OUT_DIR/rank-{i}.json`` with what it saw: world size, the
logged losses, and a checksum of its final student weights, so the test can check that the ranks agree.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest's tiny-model helpers

import torch  # noqa: E402
from conftest import make_llama, make_tokenizer, prompt_completion  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer  # noqa: E402


def main(out: Path, per_device_batch: int) -> None:
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
    (out / f"rank-{report['rank']}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 4)
