"""Trace distillation: scaffolding, verification, de-duplication, resumable collection, the collator, KD on traces."""

import json

import pytest
import torch
from datasets import Dataset
from helpers import interrupt_on_call, make_llama, make_tokenizer, tiny_config
from tokenizers import decoders
from torch import nn
from transformers import PretrainedConfig
from trl import SFTConfig, SFTTrainer

from hf_distill import DistillationTrainer
from hf_distill.cli.main import main as cli_main
from hf_distill.data.tokenizer import train_tokenizer
from hf_distill.evaluation.generate import chat_prompts
from hf_distill.models.build import ModelSize, build_llama
from hf_distill.traces import (
    PROVENANCE_COLUMNS,
    TEMPLATES,
    TraceCollator,
    TraceConfig,
    TraceManifestMismatch,
    collect_traces,
    get_template,
)
from hf_distill.traces import collect as collect_module
from hf_distill.traces.verify import canonical_trace, check_trace

# Hand-made GSM8K-format problems (with GSM8K's calculator annotations and a number of steps each).
PROBLEMS = [
    {"question": "Ann has 3 pens and buys 4 more. How many pens?", "answer": "3+4 = <<3+4=7>>7\n#### 7",
     "num_steps": 1},
    {"question": "Bob has 5 cards and gets 2 twice. How many cards?",
     "answer": "5+2 = <<5+2=7>>7\n7+2 = <<7+2=9>>9\n#### 9", "num_steps": 2},
    {"question": "Cid has 8 coins and loses 3. How many coins?", "answer": "8-3 = <<8-3=5>>5\n#### 5", "num_steps": 1},
]
# What the fake teacher may say per problem: right traces, the same trace with extra spaces and text after the answer
# (a duplicate once canonical), the right answer through a slip, wrong answers, no answer.
CANDIDATES = {
    PROBLEMS[0]["question"]: ["3+4 = 7\n#### 7", "3+4 = 7\n####   7\nmore text", "3+5 = 7\n#### 7",
                              "3*4 = 12\n#### 12"],
    PROBLEMS[1]["question"]: ["5+2 = 7\n7+2 = 9\n#### 9", "5+4 = 9\n#### 9", "5+2 = 7\n#### 7", "no idea"],
    PROBLEMS[2]["question"]: ["8-3 = 5\n#### 5", "The answer is 5.", "8+3 = 11\n#### 11", "8-3 = 5\n#### 5"],
}


class FakeTeacher(nn.Module):
    """Samples a candidate trace per problem with the global torch RNG (so seeding makes it reproducible)."""

    def __init__(self, tokenizer, candidates=CANDIDATES):
        super().__init__()
        self.tokenizer, self.candidates, self.calls = tokenizer, candidates, 0
        self.weight = nn.Parameter(torch.zeros(1))
        self.config = PretrainedConfig(name_or_path="fake-teacher")

    def generate(self, input_ids, attention_mask, max_new_tokens, num_return_sequences=1, **kwargs):
        self.calls += 1
        prompts = self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
        texts = []
        for prompt in prompts:
            options = next(c for q, c in self.candidates.items() if q in prompt)
            for _ in range(num_return_sequences):
                choice = int(torch.randint(len(options), ())) if kwargs.get("do_sample") else 0
                texts.append(options[choice] + self.tokenizer.eos_token)
        new = [self.tokenizer(t)["input_ids"][:max_new_tokens] for t in texts]
        width = max(map(len, new))
        completion = torch.tensor([ids + [self.tokenizer.pad_token_id] * (width - len(ids)) for ids in new])
        return torch.cat([input_ids.repeat_interleave(num_return_sequences, 0), completion], dim=1)


@pytest.fixture(scope="module")
def chat_tokenizer():
    texts = [p["question"] + p["answer"] for p in PROBLEMS] + [c for cs in CANDIDATES.values() for c in cs]
    return train_tokenizer(texts * 4, vocab_size=300)


def problems(n=3):
    return Dataset.from_list(PROBLEMS[:n])


# -- scaffolding ---------------------------------------------------------------------------------------------------

def test_default_template_is_the_format_chat_models_were_trained_on(chat_tokenizer):
    question = PROBLEMS[0]["question"]
    assert TEMPLATES["default"].render(chat_tokenizer, question) == chat_prompts(chat_tokenizer, [question])[0]
    plain = make_tokenizer()  # no chat template: the plain format of to_prompt_completion, for base models
    assert TEMPLATES["default"].render(plain, question) == chat_prompts(plain, [question])[0] == \
        f"Question: {question}\nAnswer:"


def test_step_by_step_template_asks_for_steps_and_a_final_line(chat_tokenizer):
    text = TEMPLATES["step_by_step"].render(chat_tokenizer, "What is 2+3?")
    assert "<|system|>" in text and "What is 2+3?" in text and "'#### <number>'" in text
    assert text.endswith("<|assistant|>")


def test_custom_templates_need_a_question_slot_and_render_as_plain_text_without_chat_template():
    plain = make_tokenizer()
    assert get_template("Q: {question}\nA:").render(plain, "2+3?") == "Q: 2+3?\nA:\n"
    with pytest.raises(ValueError, match="step_by_step"):
        get_template("no slot here")


# -- verification ----------------------------------------------------------------------------------------------------

def test_canonical_trace_cuts_after_the_final_answer_and_normalises_it():
    assert canonical_trace("3+4  = 7\n#### 7.0 pens\n#### 8") == ("3+4 = 7\n#### 7", "7")
    assert canonical_trace("So the answer is $1,000.") == ("So the answer is $1,000.\n#### 1000", "1000")
    assert canonical_trace("no number at all") == ("no number at all", None)


def test_check_trace_compares_with_the_gold_answer():
    assert check_trace("3+4 = 7\n#### 7", "7").verified
    assert not check_trace("3*4 = 12\n#### 12", "7").verified
    assert not check_trace("nothing", "7").verified


@pytest.mark.parametrize("bad, match", [
    (dict(num_samples=0), "num_samples"), (dict(temperature=0.0, num_samples=2), "num_samples=1"),
    (dict(top_p=0.0), "top_p"), (dict(template="nope"), "unknown prompt template"),
])
def test_trace_config_rejects_bad_settings(bad, match):
    with pytest.raises(ValueError, match=match):
        TraceConfig(**bad)


# -- collection ------------------------------------------------------------------------------------------------------

def collect(tmp_path, tokenizer, name="out", teacher=None, **overrides):
    config = TraceConfig(**{"num_samples": 4, "batch_size": 2, "shard_size": 2, "seed": 3, **overrides})
    return collect_traces(teacher or FakeTeacher(tokenizer), tokenizer, problems(), tmp_path / name, config,
                          log=lambda _: None)


def test_keeps_only_verified_distinct_traces_with_provenance(tmp_path, chat_tokenizer):
    traces = collect(tmp_path, chat_tokenizer, num_samples=1, temperature=0.0, dedupe=False)
    # greedy -> candidate 0 of each problem, all right
    assert [t[0]["content"] for t in traces["completion"]] == ["3+4 = 7\n#### 7", "5+2 = 7\n7+2 = 9\n#### 9",
                                                                "8-3 = 5\n#### 5"]
    assert set(PROVENANCE_COLUMNS) <= set(traces.column_names)
    assert traces["prompt"][0] == [{"role": "user", "content": PROBLEMS[0]["question"]}]
    assert traces["num_steps"] == [1, 2, 1] and traces["teacher"] == ["fake-teacher"] * 3
    assert traces["prompt_template"] == ["default"] * 3 and all(traces["verified"])


def test_traces_for_a_tokenizer_without_chat_template_are_plain_text(tmp_path):
    plain = make_tokenizer()
    plain.backend_tokenizer.decoder = decoders.ByteLevel()  # the fake teacher reads its prompts back
    traces = collect(tmp_path, plain, num_samples=1, temperature=0.0)
    assert traces["prompt"][0] == f"Question: {PROBLEMS[0]['question']}\nAnswer:"
    assert traces["completion"][0] == " 3+4 = 7\n#### 7"


def test_input_prompt_completion_columns_are_replaced_by_the_traces(tmp_path, chat_tokenizer):
    from hf_distill.data.reasoning import to_prompt_completion

    traces = collect_traces(FakeTeacher(chat_tokenizer), chat_tokenizer, to_prompt_completion(problems()),
                            tmp_path, TraceConfig(num_samples=1, temperature=0.0), log=lambda _: None)
    assert traces["completion"][1] == [{"role": "assistant", "content": "5+2 = 7\n7+2 = 9\n#### 9"}]


def test_rejection_sampling_and_dedupe_follow_the_samples(tmp_path, chat_tokenizer):
    samples = collect(tmp_path, chat_tokenizer, "all", keep_only_verified=False, dedupe=False)
    assert len(samples) == 3 * 4 and sorted(set(samples["sample_index"])) == [0, 1, 2, 3]
    kept = collect(tmp_path, chat_tokenizer, "all")  # same shards, reassembled with the default filters
    expected, seen = [], set()
    for row in samples:
        text = row["completion"][0]["content"]
        ok = row["predicted_answer"] == {7: "7", 9: "9", 5: "5"}[int(row["answer"].split("#### ")[1])]
        if ok and row["arithmetic_errors"] == 0 and (row["problem_id"], text) not in seen:
            expected.append((row["problem_id"], row["sample_index"]))
            seen.add((row["problem_id"], text))
    assert list(zip(kept["problem_id"], kept["sample_index"])) == expected
    assert all(kept["verified"]) and not any(kept["arithmetic_errors"])


def test_right_answer_through_an_arithmetic_slip_is_not_verified(tmp_path, chat_tokenizer):
    slip = {q: ["3+5 = 7\n#### 7"] for q in CANDIDATES}
    lenient = collect(tmp_path, chat_tokenizer, "lenient", teacher=FakeTeacher(chat_tokenizer, slip), num_samples=1,
                      temperature=0.0, verify_arithmetic=False, keep_only_verified=False)
    assert lenient["verified"] == [True, False, False] and lenient["arithmetic_errors"] == [1, 1, 1]
    strict = collect(tmp_path, chat_tokenizer, "lenient", teacher=FakeTeacher(chat_tokenizer, slip), num_samples=1,
                     temperature=0.0, keep_only_verified=False)
    assert strict["verified"] == [False, False, False]


def test_no_verified_trace_is_an_error_that_names_the_fixes(tmp_path, chat_tokenizer):
    wrong = {q: ["#### 1000"] for q in CANDIDATES}
    with pytest.raises(ValueError, match="keep_only_verified=False"):
        collect(tmp_path, chat_tokenizer, teacher=FakeTeacher(chat_tokenizer, wrong), num_samples=1, temperature=0.0)


def test_resume_after_a_crash_gives_the_uninterrupted_result(tmp_path, chat_tokenizer, monkeypatch):
    whole = collect(tmp_path, chat_tokenizer, "whole", keep_only_verified=False)
    calls = interrupt_on_call(monkeypatch, collect_module, "_sample_shard", call_number=2)
    with pytest.raises(KeyboardInterrupt):
        collect(tmp_path, chat_tokenizer, "resumed", keep_only_verified=False)
    manifest = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert [entry["index"] for entry in manifest["shards"]] == [0] and not (tmp_path / "resumed" / "dataset").exists()
    calls.clear()
    resumed = collect(tmp_path, chat_tokenizer, "resumed", keep_only_verified=False)
    assert len(calls) == 1  # only the missing shard was sampled again
    assert resumed.to_dict() == whole.to_dict()


def test_resuming_with_other_settings_is_refused(tmp_path, chat_tokenizer):
    collect(tmp_path, chat_tokenizer, keep_only_verified=False)
    with pytest.raises(TraceManifestMismatch, match="sampling"):
        collect(tmp_path, chat_tokenizer, keep_only_verified=False, temperature=0.9)


def test_questions_without_gold_answers_fail_early(tmp_path, chat_tokenizer):
    with pytest.raises(ValueError, match="#### <answer>"):
        collect_traces(FakeTeacher(chat_tokenizer), chat_tokenizer,
                       Dataset.from_list([{"question": "q?", "answer": "no number"}]), tmp_path, TraceConfig())
    with pytest.raises(ValueError, match="load_reasoning_dataset"):
        collect_traces(FakeTeacher(chat_tokenizer), chat_tokenizer, Dataset.from_list([{"q": "x", "a": "#### 1"}]),
                       tmp_path, TraceConfig())


def test_cli_samples_a_real_model_on_gsm8k_jsonl(tmp_path, chat_tokenizer):
    """End to end through `hf-distill traces` with a tiny random Llama: sampling runs, every sample is recorded."""
    (tmp_path / "gsm8k.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    build_llama(chat_tokenizer, ModelSize(32, 1, 2)).save_pretrained(tmp_path / "teacher")
    chat_tokenizer.save_pretrained(tmp_path / "teacher")
    code = cli_main(["traces", "--teacher_model_name_or_path", str(tmp_path / "teacher"),
                     "--dataset_name", str(tmp_path / "gsm8k.jsonl"), "--output_dir", str(tmp_path / "out"),
                     "--num_samples", "2", "--max_new_tokens", "6",
                     "--no_keep_only_verified", "--no_dedupe"])
    assert code == 0
    from datasets import load_from_disk

    traces = load_from_disk(str(tmp_path / "out" / "dataset"))
    assert len(traces) == 6 and traces["sample_index"] == [0, 1] * 3
    assert traces["teacher"][0] == str(tmp_path / "teacher")


# -- the collator and KD on traces -----------------------------------------------------------------------------------

def conversational(n=3):
    return Dataset.from_dict({
        "prompt": [[{"role": "user", "content": p["question"]}] for p in PROBLEMS[:n]],
        "completion": [[{"role": "assistant", "content": p["answer"]}] for p in PROBLEMS[:n]],
        "problem_id": list(range(n)),
    })


def trl_prepared(dataset, tokenizer, tmp_path):
    trainer = SFTTrainer(make_llama(len(tokenizer), hidden=16, layers=1), SFTConfig(
        output_dir=str(tmp_path / "sft"), report_to=[], bf16=False, use_cpu=True), train_dataset=dataset,
        processing_class=tokenizer)
    return trainer.train_dataset


def test_collator_masks_the_prompt_exactly_as_trl_prepares_it(tmp_path, chat_tokenizer):
    data = conversational()
    batch = TraceCollator(chat_tokenizer)(list(data))
    for row, prepared in enumerate(trl_prepared(data, chat_tokenizer, tmp_path)):
        length = int(batch["attention_mask"][row].sum())
        assert batch["input_ids"][row, :length].tolist() == prepared["input_ids"]
        assert batch["labels"][row, :length].tolist() == prepared["labels"]
        assert (batch["labels"][row, length:] == -100).all()
        trained = [token for token in prepared["labels"] if token != -100]
        assert chat_tokenizer.decode(trained) == PROBLEMS[row]["answer"] + "<|eos|>"


def test_collator_handles_plain_text_like_trl(tmp_path):
    tokenizer = make_tokenizer()
    data = Dataset.from_dict({"prompt": ["Ann has 3 apples and buys 2 more, so"], "completion": [" Ann has 5 apples."]})
    batch = TraceCollator(tokenizer)(list(data))
    prepared = trl_prepared(data, tokenizer, tmp_path)[0]
    assert batch["input_ids"][0].tolist() == prepared["input_ids"] and batch["labels"][0].tolist() == prepared["labels"]


def test_collator_error_names_the_config_fix(chat_tokenizer):
    with pytest.raises(ValueError, match="skip_prepare_dataset"):
        TraceCollator(chat_tokenizer)([{"input_ids": [1, 2]}])


def test_traces_with_logit_kd_distil_on_exactly_the_trace_tokens(tmp_path, chat_tokenizer):
    data = conversational()
    args = tiny_config(tmp_path, alpha=0.5, remove_unused_columns=False, per_device_train_batch_size=3,
                       dataset_kwargs={"skip_prepare_dataset": True}, bf16=False, use_cpu=True)
    vocab = len(chat_tokenizer)
    trainer = DistillationTrainer(
        make_llama(vocab, hidden=32, layers=1, seed=1), args, train_dataset=data, processing_class=chat_tokenizer,
        data_collator=TraceCollator(chat_tokenizer), teacher_model=make_llama(vocab, hidden=64, layers=2, seed=2))
    batch = TraceCollator(chat_tokenizer)(list(data))
    output = trainer._distillation_loss(trainer.model, batch, None)
    trace_tokens = sum(len(chat_tokenizer(p["answer"] + "<|eos|>", add_special_tokens=False)["input_ids"])
                       for p in PROBLEMS)
    assert output.num_tokens == trace_tokens  # KD and CE both on rationale + answer + EOS, never the prompt
    assert output.kd_sum > 0 and output.ce_sum > 0
    trainer.train()
    logged = trainer.state.log_history[0]
    assert {"kd_loss", "ce_loss"} <= set(logged)
