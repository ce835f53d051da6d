"""A tiny distillation run that checkpoints every 3 steps (see tests/test_reliability.py, kill -9 and resume).

    python tests/scripts/train_checkpointed.py OUT_DIR full     # 8 steps, uninterrupted
    python tests/scripts/train_checkpointed.py OUT_DIR crash    # writes OUT_DIR/ready after step 4, then hangs
    python tests/scripts/train_checkpointed.py OUT_DIR resume   # resume_from_checkpoint=True, finishes the 8 steps

24 examples at batch 4 make 6 steps an epoch, so a run killed after step 4 resumes from checkpoint-3, in the middle
of the first epoch, and crosses into the second. Writes the student to OUT_DIR/final and its logged losses to
OUT_DIR/losses.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest's tiny-model helpers

from helpers import make_llama, make_tokenizer, prompt_completion  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer  # noqa: E402


class HangAfterStep(TrainerCallback):
    """Stands for a process that dies mid-training: signals the test, then waits to be killed."""

    def __init__(self, step: int, ready: Path):
        self.step, self.ready = step, ready

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.ready.write_text(str(state.global_step))
            time.sleep(600)


def main(out: Path, mode: str) -> None:
    tokenizer = make_tokenizer()
    student, teacher = make_llama(len(tokenizer), 32, 1, seed=1), make_llama(len(tokenizer), 64, 2, seed=2)
    config = DistillationConfig(
        output_dir=str(out / "run"), max_steps=8, per_device_train_batch_size=4, learning_rate=1e-2, report_to=[],
        logging_steps=1, save_strategy="steps", save_steps=3, seed=0, data_seed=0, use_cpu=True,
        dataloader_num_workers=0, warmup_steps=2,
    )
    callbacks = [HangAfterStep(4, out / "ready")] if mode == "crash" else []
    trainer = DistillationTrainer(student, config, train_dataset=prompt_completion(slice(0, 24)),
                                  processing_class=tokenizer, teacher_model=teacher, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=mode == "resume" or None)
    trainer.save_model(str(out / "final"))
    losses = {log["step"]: log["loss"] for log in trainer.state.log_history if "loss" in log}
    (out / "losses.json").write_text(json.dumps(losses))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
