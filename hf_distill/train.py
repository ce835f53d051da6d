"""`hf-distill train`: a distillation run configured entirely by `DistillationConfig` arguments.

    hf-distill train --model_name_or_path ./student --teacher_model_name_or_path ./teacher \
        --dataset arithmetic --output_dir out --max_steps 200 --kd_loss forward_kl --temperature 1.0

Any `TrainingArguments`/`SFTConfig` flag works too; a YAML/JSON file can be passed instead of flags. With a teacher-logit
cache (`hf-distill cache-logits`), pass `--teacher_cache DIR` instead of `--teacher_model_name_or_path`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser

from hf_distill.config import DistillationConfig
from hf_distill.data.reasoning import load_reasoning_dataset, to_prompt_completion
from hf_distill.trainer import DistillationTrainer


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(metadata={"help": "Student checkpoint (local directory or hub id)."})
    dataset: str = field(
        default="arithmetic",
        metadata={"help": "'arithmetic' (generated), a GSM8K-style .jsonl file, or a directory of train/test.jsonl."},
    )
    question_column: str = field(default="question", metadata={"help": "Column holding the question."})
    answer_column: str = field(default="answer", metadata={"help": "Column holding the step-by-step answer."})
    num_examples: int = field(default=2000, metadata={"help": "Training problems to generate for 'arithmetic'."})


def training_dataset(source: str, num_examples: int, question_column: str = "question",
                     answer_column: str = "answer"):
    """The prompt-completion training split that `hf-distill train` (and `hf-distill cache-logits`) read."""
    generator = {"n_train": num_examples, "n_test": 1} if source == "arithmetic" else {}
    data = load_reasoning_dataset(source, question_column=question_column, answer_column=answer_column, **generator)
    return to_prompt_completion(data["train"] if hasattr(data, "keys") else data)


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser((ScriptArguments, DistillationConfig))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        script, config = parser.parse_yaml_file(argv[0])
    elif len(argv) == 1 and argv[0].endswith(".json"):
        script, config = parser.parse_json_file(argv[0])
    else:
        script, config = parser.parse_args_into_dataclasses(argv)
    train = training_dataset(script.dataset, script.num_examples, script.question_column, script.answer_column)
    tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path)
    student = AutoModelForCausalLM.from_pretrained(script.model_name_or_path, trust_remote_code=config.trust_remote_code,
                                                   use_safetensors=True)  # never unpickle a downloaded .bin
    trainer = DistillationTrainer(student, config, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(config.output_dir)
    tokenizer.save_pretrained(config.output_dir)
    return 0
