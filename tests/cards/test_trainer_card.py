"""The card `DistillationTrainer` writes: the student's start, the teacher, the KD settings and the logged metrics.

TRL's card says "fine-tuned version of [None](https://huggingface.co/None)" for a local model and is written only
with a checkpoint; these tests pin what replaced it.
"""

from __future__ import annotations

from datasets import Dataset
from helpers import CORPUS, make_llama, prompt_completion, tiny_config
from huggingface_hub import ModelCard

from hf_distill import DistillationTrainer
from hf_distill.cache.writer import collect_teacher_cache
from hf_distill.cards.refs import folder_name, hub_id, model_ref
from hf_distill.cards.trainer import distillation_settings, final_metrics

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _saved_teacher(tmp_path, tokenizer, name="my-teacher"):
    folder = tmp_path / "teachers" / name
    make_llama(len(tokenizer), hidden=64, layers=2, seed=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _last(history: list[dict], key: str) -> dict:
    return [entry for entry in history if key in entry][-1]


def test_refs_link_hub_ids_and_name_local_folders_by_their_name(tmp_path):
    assert model_ref(SMOL) == {"name": SMOL, "hub_id": SMOL}
    assert model_ref(tmp_path / "runs" / "teacher") == {"name": "teacher", "hub_id": None}
    assert model_ref("./teacher/") == {"name": "teacher", "hub_id": None}
    assert folder_name(tmp_path / "run" / "checkpoint-500") == "run/checkpoint-500"
    (tmp_path / "gpt2").mkdir()
    assert hub_id(tmp_path / "gpt2") is None and hub_id("gpt2") == "gpt2" and model_ref(None) is None


def test_final_metrics_are_the_last_logged_values_without_lr_or_throughput():
    history = [{"loss": 3.0, "kd_loss": 1.0, "learning_rate": 1e-3, "grad_norm": 2.0, "step": 1},
               {"loss": 2.5, "kd_loss": 0.75, "top1_agreement": 0.25, "step": 2},
               {"eval_loss": 2.25, "eval_runtime": 0.5, "eval_kd_loss": 0.5, "step": 2},
               {"train_loss": 2.75, "train_runtime": 12.0, "train_samples_per_second": 9.0, "step": 2}]
    assert final_metrics(history) == [
        ("train loss (last logged step)", "2.5", 2), ("kd_loss", "0.75", 2), ("top1_agreement", "25.0%", 2),
        ("eval_loss", "2.25", 2), ("eval_kd_loss", "0.5", 2), ("train loss (mean over the run)", "2.75", 2),
        ("training wall time", "12.0 s", 2)]


def test_settings_name_feature_alignment_teacher_quantisation_and_the_adapter(tmp_path):
    args = tiny_config(tmp_path, kd_loss="tvd", beta=0.9, feature_weight=0.5, feature_loss="nmse",
                       attention_weight=0.1)
    adapter = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
               "base_quantization": "4bit", "trainable_parameters": 12_345, "merged": False}
    rows = dict(distillation_settings(args, {"dtype": "bfloat16", "quantization": "8bit"}, adapter))
    assert "beta" not in rows and rows["KD loss"] == "`tvd`"  # beta only changes jsd and the skew losses
    assert rows["feature alignment"] == ("hidden states: layers `uniform`, nmse loss, weight 0.5, linear projector; "
                                         "attention maps: weight 0.1")
    assert rows["teacher signal"] == "live model, run in bfloat16"
    assert rows["teacher quantisation"] == "bitsandbytes 8bit"
    assert rows["PEFT adapter"] == ("LORA r=8, alpha=16, targets q_proj, v_proj, on a 4bit base (QLoRA); "
                                    "12.3K trainable parameters")


def test_save_model_with_save_strategy_no_writes_a_card_naming_the_teacher_settings_and_metrics(
        tmp_path, tokenizer, student):
    teacher = _saved_teacher(tmp_path, tokenizer)
    args = tiny_config(tmp_path, kd_loss="jsd", beta=0.3, temperature=2.0, alpha=0.25, eval_strategy="steps",
                       eval_steps=2, per_device_eval_batch_size=4)
    trainer = DistillationTrainer(student, args, train_dataset=Dataset.from_dict({"text": CORPUS[:16]}),
                                  eval_dataset=Dataset.from_dict({"text": CORPUS[16:24]}), processing_class=tokenizer,
                                  teacher_model=str(teacher))
    trainer.train()
    readme = tmp_path / "out" / "README.md"
    assert not readme.exists()  # save_strategy="no": no checkpoint wrote one
    trainer.save_model()
    card = ModelCard.load(readme)
    content, text, history = card.content, card.text, trainer.state.log_history
    assert "None" not in content and str(tmp_path) not in content and "huggingface.co" not in content
    assert card.data.base_model is None  # built from a config: no Hub base model
    assert "from the teacher `my-teacher` (a local checkpoint; 107.2K parameters)" in text
    assert "| KD loss | `jsd` |" in text and "| temperature | 2 |" in text and "| beta | 0.3 |" in text
    assert "| alpha (weight of the hard-label CE) | 0.25 |" in text and "| optimiser steps | 2 of 2 |" in text
    train, evaluation = _last(history, "kd_loss"), _last(history, "eval_kd_loss")
    assert train["step"] == evaluation["step"] == 2
    for key in ("kd_loss", "ce_loss"):
        assert f"| {key} | {train[key]:.4g} | 2 |" in text
        assert f"| eval_{key} | {evaluation[f'eval_{key}']:.4g} | 2 |" in text
    assert f"| top1_agreement | {train['top1_agreement']:.1%} | 2 |" in text
    assert f"| train loss (last logged step) | {train['loss']:.4g} | 2 |" in text
    assert f"| train loss (mean over the run) | {_last(history, 'train_loss')['train_loss']:.4g} |" in text
    assert 'from_pretrained("out")' in text


def test_hub_ids_are_linked_and_only_the_student_becomes_base_model(tmp_path, tokenizer, student, teacher):
    student.config._name_or_path = "HuggingFaceTB/SmolLM2-135M"  # as if loaded from the Hub
    teacher.config._name_or_path = SMOL
    args = tiny_config(tmp_path, kd_loss="reverse_kl", hub_model_id="alice/smol-distilled")
    trainer = DistillationTrainer(student, args, train_dataset=Dataset.from_dict({"text": CORPUS[:8]}),
                                  processing_class=tokenizer, teacher_model=teacher,
                                  teacher_processing_class=tokenizer)
    trainer.create_model_card(dataset_name="openai/gsm8k")  # what push_to_hub calls
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M" and card.data.datasets == ["openai/gsm8k"]
    assert card.data.model_name == "smol-distilled" and "distillation" in card.data.tags
    assert f"from the teacher [{SMOL}](https://huggingface.co/{SMOL}) (" in card.text
    assert "started from [HuggingFaceTB/SmolLM2-135M](https://huggingface.co/HuggingFaceTB/SmolLM2-135M)" in card.text
    assert "| beta |" not in card.text and 'from_pretrained("alice/smol-distilled")' in card.text
    assert "Nothing was logged yet." in card.text


def test_a_cache_card_names_the_teacher_its_manifest_records_and_the_top_k(tmp_path, tokenizer, student):
    teacher = _saved_teacher(tmp_path, tokenizer, name="cached-teacher")
    data = prompt_completion(slice(0, 8))
    collect_teacher_cache(str(teacher), data, tmp_path / "caches" / "k5", tokenizer, args=tiny_config(tmp_path),
                          top_k=5, temperature=2.0, log=lambda _: None)
    trainer = DistillationTrainer(student, tiny_config(tmp_path, temperature=2.0, max_steps=1), train_dataset=data,
                                  processing_class=tokenizer, teacher_cache=str(tmp_path / "caches" / "k5"))
    trainer.train()
    trainer.save_model()
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert "from the teacher `cached-teacher` (a local checkpoint), through its teacher-logit cache `k5` " \
           "(top-5 log-probabilities at temperature 2.0)" in card.text
    assert "| teacher top-k (cache) | 5 log-probabilities per token + the tail mass |" in card.text
    assert f"| kd_loss | {_last(trainer.state.log_history, 'kd_loss')['kd_loss']:.4g} | 1 |" in card.text
    assert str(tmp_path) not in card.content and "None" not in card.content


def test_a_served_teacher_is_named_by_its_served_name_with_its_engine_and_top_k(tmp_path):
    from types import SimpleNamespace

    from hf_distill.cards.trainer import describe_teacher

    served = SimpleNamespace(client=object(), model="Qwen/Qwen2.5-7B-Instruct", engine="vllm", top_k=20)
    teacher = describe_teacher(SimpleNamespace(teacher=served, teacher_model=None))
    assert teacher == {"model": {"name": "Qwen/Qwen2.5-7B-Instruct", "hub_id": "Qwen/Qwen2.5-7B-Instruct"},
                       "served": {"engine": "vllm", "top_k": 20}}
    rows = dict(distillation_settings(tiny_config(tmp_path), teacher, None))
    assert rows["teacher signal"] == "served teacher (vllm), scored over HTTP during training"
    assert rows["teacher top-k (served)"] == "20 log-probabilities per token + the tail mass"
