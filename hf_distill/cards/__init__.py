"""Model cards for distilled students: a Jinja template in ``model_cards/`` rendered with `huggingface_hub`'s
`ModelCard`/`ModelCardData`, so the YAML header (base_model, datasets, license, tags, model-index) is what the Hub
expects, and the text tells the student's story: lineage back to the root teacher, recipe excerpt, metrics, plots.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hf_distill.cards.plots import cascade_plot, training_curves
from hf_distill.cards.refs import folder_name, hub_id, strip_local_paths
from hf_distill.deploy.report import deployment_table as deployment_markdown
from hf_distill.deploy.report import load_deployment
from hf_distill.utils.io import atomic_path

if TYPE_CHECKING:
    from hf_distill.cascade.recipe import Stage
    from hf_distill.cascade.runner import StageContext

TEMPLATE = "student.md.j2"
_SEARCH = (Path(__file__).resolve().parents[2] / "model_cards",  # a source checkout / editable install
           Path(sys.prefix) / "share" / "hf_distill" / "model_cards")  # a wheel (pyproject data-files)


def template_path(name: str = TEMPLATE) -> Path:
    for folder in _SEARCH:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"model card template {name!r} not found in {[str(p) for p in _SEARCH]}")


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _count(value) -> str:
    if value is None:
        return "-"
    return f"{value / 1e9:.2f}B" if value >= 1e9 else f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.1f}K"


def metrics_table(metrics: dict) -> list[tuple[str, str]]:
    rows = [("accuracy (exact match)", _pct(metrics.get("accuracy"))),
            ("agreement with teacher (same final answer)", _pct(metrics.get("agreement_with_teacher"))),
            ("Logic-Match with teacher",
             "-" if metrics.get("logic_match") is None else f"{metrics['logic_match']:.3f}"),
            ("teacher accuracy kept", _pct(metrics.get("accuracy_kept"))),
            ("parameters", _count(metrics.get("parameters"))),
            ("active parameters per token (mixture of experts)", _count(metrics.get("active_parameters"))),
            ("size relative to teacher", "-" if not metrics.get("size_vs_teacher")
             else f"1/{1 / metrics['size_vs_teacher']:.1f}"),
            ("generation speed (tokens/s, greedy)", "-" if metrics.get("tokens_per_second") is None
             else f"{metrics['tokens_per_second']:.0f}"),
            ("training wall time (s)", "-" if metrics.get("train_seconds") is None
             else f"{metrics['train_seconds']:.0f}")]
    return [row for row in rows if row[1] != "-"]


def render_card(
    *,
    model_name: str,
    recipe_name: str,
    stage_index: int,
    num_stages: int,
    methods: list[str],
    teacher: str | None,
    base_model: str | None,
    lineage: list[dict],
    metrics: dict,
    stage_recipe: dict,
    dataset: str,
    hub_dataset: str | None = None,
    license: str | None = None,
    shrink: dict | None = None,
    adapter: dict | None = None,
    repo_or_path: str = ".",
    recipe_file: str = "RECIPE.yaml",
    has_curves: bool = False,
    has_cascade_plot: bool = False,
    deployment_table: str | None = None,
    deployment_checks: list[str] | None = None,
    moe: dict | None = None,
    template: str | Path | None = None,
) -> ModelCard:
    """A model card from plain data (pure: no file is read but the template). ``deployment_checks``: one line per
    GGUF file on how its greedy answers agree with the float student's; ``moe``: the upcycling settings of a
    mixture-of-experts student (``num_experts``, ``top_k``, ...)."""
    eval_results = None
    if metrics.get("accuracy") is not None:
        eval_results = [EvalResult(task_type="text-generation", dataset_type=hub_dataset or "local",
                                   dataset_name=dataset, metric_type="accuracy", metric_name="exact match",
                                   metric_value=round(metrics["accuracy"], 4))]
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model or None,  # None drops the key: never the string "None"
        datasets=[hub_dataset] if hub_dataset else None,
        license=license,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["hf-distill", "distillation", "knowledge-distillation", *(f"distillation-{m}" for m in methods),
              *(["pruning", "shrink"] if shrink else []), *(["lora", "merged"] if adapter else []),
              *(["moe", "mixture-of-experts", "upcycling"] if moe else []),
              *(["gguf"] if deployment_table else []), "cascade"],
        eval_results=eval_results,
    )
    rows = [{**row, "parameters_h": _count(row.get("parameters")), "accuracy_h": _pct(row.get("accuracy")),
             "agreement_h": _pct(row.get("agreement_with_teacher"))} for row in lineage]
    shrink_text = None
    if shrink:
        spec = ", ".join(f"{k}={v}" for k, v in shrink["spec"].items())
        shrink_text = f"{spec}; teacher layers kept: {shrink['teacher_layers_kept']}"
        scores = shrink.get("scores") or {}
        if "layer_scores" in scores:  # importance pruning: what each teacher layer scored on calibration data
            shrink_text += (f"; layer importance ({scores['layer_importance']}, higher kept) per teacher layer: "
                            + ", ".join(f"{v:.3g}" for v in scores["layer_scores"]))
        if "activation_kept" in scores:
            shrink_text += "; share of the teacher's activation kept: " + ", ".join(
                f"{kind} {share:.0%}" for kind, share in scores["activation_kept"].items())
    return ModelCard.from_template(
        card_data, template_path=str(template or template_path()), model_name=model_name, recipe_name=recipe_name,
        stage_index=stage_index, num_stages=num_stages, methods=" + ".join(methods), teacher=teacher,
        lineage=rows, metrics_table=metrics_table(metrics), eval_examples=metrics.get("eval_examples", "-"),
        dataset=dataset, shrink=shrink, shrink_text=shrink_text, adapter=adapter,
        recipe_excerpt=yaml.safe_dump(stage_recipe, sort_keys=False).strip(),
        repo_or_path=repo_or_path, recipe_file=recipe_file, has_curves=has_curves, has_cascade_plot=has_cascade_plot,
        deployment_table=deployment_table, deployment_checks=deployment_checks or [], moe=moe,
        moe_text=moe_text(moe, metrics) if moe else None,
    )


def moe_text(moe: dict, metrics: dict) -> str:
    """The card's line on a mixture-of-experts student: its experts, where they come from, what a token uses."""
    width = moe.get("expert_intermediate_size")
    text = (f"{moe['num_experts']} experts per layer, {moe['top_k']} used per token (Mixtral layout), each expert "
            + (f"a {width}-neuron slice of" if width else "a copy of") + " the dense MLP it was upcycled from; the "
            f"router was trained with the load-balancing loss (coefficient {moe.get('router_aux_loss_coef', 0.01)})")
    if metrics.get("active_parameters") and metrics.get("parameters"):
        text += (f". Active parameters per token: {_count(metrics['active_parameters'])} of "
                 f"{_count(metrics['parameters'])} in all")
    return text


def deployment_checks(deployment: dict) -> list[str]:
    """One line per GGUF export whose greedy answers were compared with the float student's (``deployment.json``'s
    ``agreement``, written by a cascade stage's ``export: {check: N}``)."""
    lines = []
    for quant, export in (deployment.get("exports") or {}).items():
        agreement = export.get("agreement") or {}
        if "exact" in agreement:
            lines.append(f"GGUF {quant}: {agreement['exact']:.0%} of {agreement['prompts']} test problems answered "
                         f"identically (greedy, up to {agreement.get('max_new_tokens', '?')} tokens), "
                         f"{agreement['token']:.0%} of tokens before the first difference")
        elif "skipped" in agreement:
            lines.append(f"GGUF {quant}: not compared ({agreement['skipped']})")
    return lines


def served_speeds(deployment: dict) -> dict[str, float]:
    """Tokens/s of one request at a time per benchmarked GGUF type (the lowest concurrency measured)."""
    best: dict[str, tuple[int, float]] = {}
    for row in deployment.get("serving") or []:
        quant = row.get("format") or "gguf"
        if quant not in best or row["concurrency"] < best[quant][0]:
            best[quant] = (row["concurrency"], row["tokens_per_second"])
    return {quant: speed for quant, (_, speed) in best.items()}


def write_stage_card(model_dir: Path, stage: "Stage", context: "StageContext", metrics: dict, shrink: dict | None,
                     adapter: dict | None, manifest: dict) -> ModelCard:
    """Plots and README.md for a finished cascade stage, written into its model directory."""
    import json

    recipe = context.recipe
    index = [s.name for s in recipe.stages].index(stage.name)
    log_path = model_dir / "log_history.json"
    curves = training_curves(json.loads(log_path.read_text()), model_dir / "training_curves.png",
                             title=f"{recipe.name} / {stage.name}") if log_path.exists() else None
    deployment = load_deployment(model_dir)
    this = {"name": stage.name, "model": None, **metrics}
    if served_speeds(deployment):
        this["served_tokens_per_second"] = served_speeds(deployment)
    rows = [row for row in (*context.lineage, this) if row.get("accuracy") is not None]
    plotted = cascade_plot(rows, model_dir / "cascade.png", title=recipe.name) if len(rows) > 1 else None
    teacher_raw = _teacher_ref(recipe, index, manifest)  # a hub id, or a path of this machine
    teacher = _shown(teacher_raw, context.root, recipe) if stage.methods != ["sft"] else None
    if stage.student.model:
        base_model = stage.student.model  # fine-tuned from this checkpoint
    elif stage.student.shrink is not None:
        base_model = teacher_raw  # pruned from the teacher
    else:
        base_model = None  # trained from scratch
    push = stage.push_to_hub or {}
    data = stage.data.dataset
    hub_dataset = data if data != "arithmetic" and not Path(data).exists() else None
    lineage = [{**row, "model": _shown(row["model"], context.root, recipe) if row.get("model") else None}
               for row in (*context.lineage, this)]
    card = render_card(
        model_name=push.get("repo_id", "").split("/")[-1] or f"{recipe.name}-{stage.name}",
        recipe_name=recipe.name, stage_index=index + 1, num_stages=len(recipe.stages), methods=stage.methods,
        teacher=teacher, base_model=hub_id(base_model), lineage=lineage, metrics=metrics,
        stage_recipe=strip_local_paths(stage.raw), dataset="embedded arithmetic word problems (GSM8K format)"
        if data == "arithmetic" else hub_dataset or folder_name(data), hub_dataset=hub_dataset,
        license=recipe.license, shrink=shrink, adapter=adapter,
        repo_or_path=push.get("repo_id") or _shown(str(model_dir), context.root, recipe),
        recipe_file=_shown_path(recipe.path) if recipe.path else "RECIPE.yaml", has_curves=curves is not None,
        has_cascade_plot=plotted is not None, deployment_table=deployment_markdown(deployment),
        deployment_checks=deployment_checks(deployment),
        moe=stage.student.moe.to_dict() if stage.student.moe is not None else None,
    )
    with atomic_path(model_dir / "README.md") as tmp:
        card.save(tmp)
    return card


def _shown(ref: str, root: Path, recipe) -> str:
    """A model as a card shows it, never by a path of this machine: a stage by its pushed repo, else by its folder
    inside the cascade's output (``stages/<name>/model``); anything else by its hub id or folder name."""
    path, root = Path(ref).expanduser().resolve(), Path(root).resolve()
    for stage in recipe.stages:
        if stage.push_to_hub and path == root / "stages" / stage.name / "model":
            return stage.push_to_hub["repo_id"]
    if hub_id(ref):
        return ref
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else folder_name(ref)


def _shown_path(path) -> str:
    """A file the reader runs again (the recipe): kept when relative, by its name when absolute."""
    return Path(path).name if Path(path).is_absolute() else str(path)


def _teacher_ref(recipe, index: int, manifest: dict) -> str:
    """The teacher by the name a reader can find: its hub repo if it was pushed, else its id or local path
    (which :func:`_shown` turns into a name for the card)."""
    if index == 0:
        return recipe.teacher.model if recipe.teacher and recipe.teacher.model else "inline config"
    previous = recipe.stages[index - 1]
    if previous.push_to_hub:
        return previous.push_to_hub["repo_id"]
    entry = manifest.get("stages", {}).get(previous.name, {})
    return entry.get("model_dir") or f"{recipe.name}/{previous.name}"
