"""Model cards rendered from model_cards/student.md.j2: Hub metadata, lineage, metrics, recipe excerpt, plots."""

from __future__ import annotations

from huggingface_hub import ModelCard

from hf_distill.cards import metrics_table, render_card, template_path
from hf_distill.cards.plots import cascade_plot, training_curves

LINEAGE = [
    {"name": "root teacher", "model": "Qwen/Qwen2.5-7B-Instruct", "parameters": 7.6e9, "accuracy": 0.9},
    {"name": "qwen-1.5b", "model": "out/stages/qwen-1.5b/model", "parameters": 1.54e9, "accuracy": 0.7,
     "agreement_with_teacher": 0.75},
    {"name": "qwen-0.5b", "parameters": 4.94e8, "accuracy": 0.5, "agreement_with_teacher": 0.6},
]
METRICS = {"accuracy": 0.5, "agreement_with_teacher": 0.6, "logic_match": 0.4321, "parameters": 4.94e8,
           "size_vs_teacher": 4.94e8 / 1.54e9, "tokens_per_second": 812.0, "accuracy_kept": 0.5 / 0.7,
           "eval_examples": 500}


def card(**overrides) -> ModelCard:
    values = dict(model_name="qwen-0.5b-cascade", recipe_name="qwen-cascade", stage_index=2, num_stages=2,
                  methods=["logit"], teacher="your-name/qwen-1.5b", base_model="Qwen/Qwen2.5-0.5B-Instruct",
                  lineage=LINEAGE, metrics=METRICS,
                  stage_recipe={"name": "qwen-0.5b", "method": "logit", "training": {"kd_loss": "forward_kl"}},
                  dataset="openai/gsm8k", hub_dataset="openai/gsm8k", license="apache-2.0",
                  repo_or_path="your-name/qwen-0.5b-cascade", recipe_file="recipes/qwen.yaml", has_curves=True)
    values.update(overrides)
    return render_card(**values)


def test_template_ships_in_model_cards():
    assert template_path().parent.name == "model_cards" and template_path().name.endswith(".j2")


def test_card_metadata_is_what_the_hub_reads():
    data = ModelCard(str(card())).data  # round trip through the YAML header
    assert data.base_model == "Qwen/Qwen2.5-0.5B-Instruct" and data.datasets == ["openai/gsm8k"]
    assert data.license == "apache-2.0" and data.pipeline_tag == "text-generation"
    assert {"distillation", "distillation-logit", "hf-distill"} <= set(data.tags)
    assert data.eval_results[0].metric_type == "accuracy" and data.eval_results[0].metric_value == 0.5


def test_card_text_tells_the_lineage_metrics_and_recipe():
    text = card().text
    rows = [line for line in text.splitlines() if line.startswith("| ") and " | " in line]
    lineage = [row for row in rows if row.split("|")[1].strip().isdigit()]
    assert [row.split("|")[2].split("(")[0].strip() for row in lineage] == ["root teacher", "qwen-1.5b", "qwen-0.5b"]
    assert "| 7.60B | 90.0% | - |" in lineage[0] and "| 494.00M | 50.0% | 60.0% |" in lineage[2]
    assert "| Logic-Match with teacher | 0.432 |" in text and "| size relative to teacher | 1/3.1 |" in text
    assert "| teacher accuracy kept | 71.4% |" in text and "| generation speed (tokens/s, greedy) | 812 |" in text
    assert "name: qwen-0.5b\nmethod: logit\ntraining:\n  kd_loss: forward_kl" in text
    assert "from the teacher `your-name/qwen-1.5b`" in text and "hf-distill cascade recipes/qwen.yaml" in text
    assert "![training curves](training_curves.png)" in text and "cascade.png" not in text


def test_a_model_trained_from_scratch_has_no_base_model_and_missing_metrics_are_left_out():
    rendered = card(base_model=None, teacher=None, methods=["sft"], metrics={"accuracy": 0.9, "parameters": 1e6},
                    hub_dataset=None)
    assert "base_model" not in str(rendered).split("---")[1] and "None" not in str(rendered)
    assert [name for name, _ in metrics_table({"accuracy": 0.9})] == ["accuracy (exact match)"]


def test_plots_are_written_as_png(tmp_path):
    history = [{"step": s, "loss": 3.0 / s, "kd_loss": 1.0 / s} for s in range(1, 6)] + [{"train_runtime": 1.0}]
    curves = training_curves(history, tmp_path / "curves.png")
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert training_curves([{"train_runtime": 1.0}], tmp_path / "none.png") is None  # nothing logged, no plot
    plot = cascade_plot(LINEAGE, tmp_path / "cascade.png", title="qwen")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob(".*"))


def _cascade_card(tmp_path, push: dict | None = None) -> ModelCard:
    """s2's card in a cascade whose root teacher and s1's starting checkpoint are local folders of this machine."""
    from hf_distill.cards import write_stage_card
    from hf_distill.cascade import parse_recipe
    from hf_distill.cascade.runner import StageContext

    root_teacher, base = tmp_path / "models" / "big-teacher", tmp_path / "models" / "small-base"
    s1 = {"name": "s1", "method": "logit", "student": {"model": str(base)}, **({"push_to_hub": push} if push else {})}
    s2 = {"name": "s2", "method": "logit", "student": {"shrink": {"num_layers": 1}}}
    recipe = parse_recipe({"name": "local", "teacher": str(root_teacher), "stages": [s1, s2]},
                          path=tmp_path / "recipes" / "local.yaml")
    out = tmp_path / "cascade"
    model_dir = out / "stages" / "s2" / "model"
    model_dir.mkdir(parents=True)
    lineage = [{"name": "root teacher", "model": str(root_teacher), "parameters": 2e6, "accuracy": 0.5},
               {"name": "s1", "model": str(out / "stages" / "s1" / "model"), "parameters": 1e6, "accuracy": 0.4}]
    manifest = {"stages": {"s1": {"model_dir": str(out / "stages" / "s1" / "model")}}}
    metrics = {"accuracy": 0.3, "parameters": 5e5}
    write_stage_card(model_dir, recipe.stages[1], StageContext(recipe, out, lineage), metrics, None, None, manifest)
    card = ModelCard.load(model_dir / "README.md")
    assert str(tmp_path) not in card.content  # no path of the machine that trained it, anywhere
    return card


def test_cascade_card_names_local_models_by_their_folder_not_their_path(tmp_path):
    card = _cascade_card(tmp_path)
    assert card.data.base_model is None  # pruned from a local teacher: no Hub base model
    assert "| 0 | root teacher (`big-teacher`) |" in card.text and "| 1 | s1 (`stages/s1/model`) |" in card.text
    assert "from the teacher `stages/s1/model`" in card.text and 'from_pretrained("stages/s2/model")' in card.text
    assert "hf-distill cascade local.yaml" in card.text


def test_cascade_card_names_a_pushed_teacher_by_its_repo_id(tmp_path):
    card = _cascade_card(tmp_path, push={"repo_id": "alice/s1"})
    assert card.data.base_model == "alice/s1"  # pruned from the pushed s1
    assert "| 1 | s1 (`alice/s1`) |" in card.text and "from the teacher `alice/s1`" in card.text


def test_deployment_and_moe_lines_come_from_deployment_json_and_the_stage(tmp_path):
    from hf_distill.cards import deployment_checks, served_speeds

    deployment = {"exports": {"f16": {"file": "s.f16.gguf", "bytes": 2_000_000,
                                      "agreement": {"exact": 1.0, "token": 1.0, "prompts": 8, "max_new_tokens": 64}},
                              "q8_0": {"file": "s.q8_0.gguf", "bytes": 1_100_000,
                                       "agreement": {"skipped": "a mixture of experts"}}},
                  "serving": [{"format": "q8_0", "concurrency": c, "tokens_per_second": t} for c, t in
                              ((4, 90.0), (1, 120.0))]}
    assert served_speeds(deployment) == {"q8_0": 120.0}  # one request at a time: the lowest level measured
    checks = deployment_checks(deployment)
    assert checks == ["GGUF f16: 100% of 8 test problems answered identically (greedy, up to 64 tokens), 100% of "
                      "tokens before the first difference", "GGUF q8_0: not compared (a mixture of experts)"]
    text = card(deployment_table="| format |\n|---|", deployment_checks=checks,
                moe={"num_experts": 8, "top_k": 2, "router_aux_loss_coef": 0.01},
                metrics={**METRICS, "active_parameters": 2.0e8}).text
    assert text.index("## Deployment") < text.index("* GGUF f16: 100% of 8") < text.index("## How it was trained")
    assert ("8 experts per layer, 2 used per token (Mixtral layout), each expert a copy of the dense MLP" in text
            and "Active parameters per token: 200.00M of 494.00M in all" in text)
    rows = [{**row, "served_tokens_per_second": {"q8_0": 150.0 / (i + 1)}, "tokens_per_second": 100.0 / (i + 1)}
            for i, row in enumerate(LINEAGE)]
    assert cascade_plot(rows, tmp_path / "speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
