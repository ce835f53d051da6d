"""`hf-distill train`: a distillation run configured entirely by `DistillationConfig` arguments.

    hf-distill train --model_name_or_path ./student --teacher_model_name_or_path ./teacher \
        --dataset_name arithmetic --output_dir out --max_steps 200 --kd_loss forward_kl --temperature 1.0
    hf-distill train --config run.yaml --max_steps 10     # the YAML's values, flags override them

Any `TrainingArguments`/`SFTConfig` flag works too (`--eval_strategy steps` evaluates on `--dataset_test_split`,
`--resume_from_checkpoint DIR|true` continues a run). With a teacher-logit cache (`hf-distill cache-logits`), pass
`--teacher_cache DIR` instead of `--teacher_model_name_or_path`. A `.gguf` file works wherever a model path does.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from hf_distill.cli.arguments import DatasetArguments, load_splits
from hf_distill.cli.parser import Parser
from hf_distill.config import DistillationConfig
from hf_distill.models.gguf import load_causal_lm, load_tokenizer
from hf_distill.trainer import DistillationTrainer


@dataclass
class ScriptArguments(DatasetArguments):
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Student checkpoint: a local directory, a hub id or a .gguf file."},
    )


def parser() -> Parser:
    return Parser((ScriptArguments, DistillationConfig), prog="hf-distill train",
                  description="Distil a student from a teacher (or a teacher-logit cache) with DistillationConfig "
                  "arguments; any TrainingArguments/SFTConfig flag works too.")


def parse(argv: list[str]) -> tuple[ScriptArguments, DistillationConfig]:
    """Flags and/or `--config FILE.yaml`; a lone FILE.yaml/.json (the older `hf-distill train run.yaml`) is that."""
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json")):
        argv = ["--config", argv[0]]
    return parser().parse(argv)


def resume_value(value: str | bool | None) -> str | bool | None:
    """`--resume_from_checkpoint true` means the newest complete checkpoint in output_dir; a path means that one."""
    if isinstance(value, str) and value.lower() in ("true", "false", ""):
        return value.lower() == "true" or None
    return value


def main(argv: list[str] | None = None) -> int:
    script, config = parse(sys.argv[1:] if argv is None else argv)
    if script.model_name_or_path is None:
        parser().error("--model_name_or_path is required (the student: a local directory, a hub id or a .gguf file)")
    tokenizer = load_tokenizer(script.model_name_or_path)
    train, test = load_splits(script, with_test=config.eval_strategy != "no", tokenizer=tokenizer)
    student = load_causal_lm(script.model_name_or_path, trust_remote_code=config.trust_remote_code,
                             use_safetensors=True)  # never unpickle a downloaded .bin
    trainer = DistillationTrainer(student, config, train_dataset=train, eval_dataset=test, processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=resume_value(config.resume_from_checkpoint))
    trainer.save_model(config.output_dir)
    trainer.save_state()  # trainer_state.json: the log history, as the transformers example scripts keep it
    if trainer.is_world_process_zero():  # under a launcher: one tokenizer write, one message
        tokenizer.save_pretrained(config.output_dir)
        print(f"Saved the distilled student to {os.path.abspath(config.output_dir)} (load it with "
              f"AutoModelForCausalLM.from_pretrained).", flush=True)
    return 0

