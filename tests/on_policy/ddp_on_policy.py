"""On-policy distillation under ``accelerate launch`` with two CPU processes (see tests/on_policy/test_ddp.py).

    accelerate launch --config_file recipes/accelerate/ddp.yaml tests/on_policy/ddp_on_policy.py OUT_DIR

Every prompt of the dataset is the same, so only each rank's own sampling stream can make the ranks' completions
differ. Each rank writes ``OUT_DIR/rank-{i}.json``: its generated completions, its local and the global count of
loss tokens per step (``num_items_in_batch``), the logged losses and a checksum of its final weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the tiny-model helpers

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from helpers import make_llama, make_tokenizer  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer  # noqa: E402
from hf_distill.utils.device import end_distributed  # noqa: E402


def main(out: Path) -> None:
    tokenizer = make_tokenizer()
    student, teacher = make_llama(len(tokenizer), 32, 1, seed=1), make_llama(len(tokenizer), 64, 2, seed=2)
    data = Dataset.from_dict({"prompt": ["Ann has 3 apples and buys 2 more, so"] * 16, "completion": [" 5."] * 16})
    config = DistillationConfig(
        output_dir=str(out / "run"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2, report_to=[],
        logging_steps=1, save_strategy="no", seed=0, dataloader_num_workers=0, use_cpu=True, bf16=False,
        lmbda=1.0, alpha=0.0, kd_loss="reverse_kl", max_new_tokens=6, log_completions=False,
    )
    trainer = DistillationTrainer(student, config, train_dataset=data, processing_class=tokenizer,
                                  teacher_model=teacher)
    seen = {"completions": [], "local_tokens": [], "num_items": []}
    get_batch_samples = trainer.get_batch_samples

    def recording(*args, **kwargs):
        batches, num_items = get_batch_samples(*args, **kwargs)
        seen["completions"] += [row[labels != -100].tolist() for b in batches
                                for row, labels in zip(b["input_ids"], b["labels"])]
        seen["local_tokens"].append(sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches))
        seen["num_items"].append(int(num_items))
        return batches, num_items

    trainer.get_batch_samples = recording
    trainer.train()
    weights = torch.cat([p.detach().double().flatten() for p in trainer.model.parameters()])
    report = {"rank": trainer.args.process_index, "world_size": trainer.args.world_size, **seen,
              "losses": [log["loss"] for log in trainer.state.log_history if "loss" in log],
              "weights_sum": weights.sum().item(), "weights_sq_sum": weights.square().sum().item()}
    (out / f"rank-{report['rank']}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    end_distributed()  # an open gloo group at exit sometimes aborts rank 0 after a finished run
