"""Logit KD alone vs logit KD + hidden-state alignment on the embedded reasoning task, at the same step count.

Uses a finished ``hf-distill demo`` directory (its data, tokenizer and SFT teacher) and trains the demo's student
(same size, init, data, steps and hyper-parameters) once per arm:

* ``kd``: the demo's logit KD (``alpha`` CE + forward KL), no feature alignment;
* ``kd+features``: the same plus hidden-state alignment (uniform layer map, linear projectors, ``--feature-loss``,
  ``--feature-weight``).

For each arm it reports greedy-decoding accuracy on the test split, the held-out forward KL(teacher || student) per
completion token on the test split (``eval_kd_loss`` at T = 1), and two step times: the median of the training run
(the Trainer's own loop, :class:`benchmarks._common.StepTimer`), and the median forward+backward time of the two arms
run alternately on the same batches (``--timing-steps`` each), which is what the overhead column uses: on a shared
machine, interleaving exposes both arms to the same load. Finished arms are kept in ``--out`` and skipped on a re-run
(``--fresh`` to redo). Not a test; run by hand::

    OMP_NUM_THREADS=1 python benchmarks/feature_alignment.py --demo-dir /tmp/demo_d --out /tmp/feature_bench
    python benchmarks/feature_alignment.py --demo-dir DIR --out OUT --steps 3 --n-test 4   # seconds (smoke)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import StepTimer, load_average, make_demo_student  # noqa: E402
from datasets import load_from_disk  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from hf_distill.config import DistillationConfig  # noqa: E402
from hf_distill.data.reasoning import to_prompt_completion  # noqa: E402
from hf_distill.demo import DemoSettings, _training_args  # noqa: E402
from hf_distill.evaluation.generate import evaluate_reasoning  # noqa: E402
from hf_distill.trainer import DistillationTrainer  # noqa: E402


def run_arm(name: str, features: dict, demo: Path, out: Path, settings: DemoSettings, n_test: int, init: str) -> dict:
    """Train one arm, evaluate it, and write ``out/name/result.json`` atomically (the marker of a finished arm)."""
    result_file = out / name / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    data = load_from_disk(str(demo / "data" / "dataset"))
    tokenizer = AutoTokenizer.from_pretrained(demo / "data" / "tokenizer")
    teacher = AutoModelForCausalLM.from_pretrained(demo / "teacher")
    student = make_demo_student(tokenizer, teacher, settings.seed, init)
    test = data["test"].select(range(min(n_test, len(data["test"]))))
    common = _training_args(settings, out / name / "run", settings.student_steps, settings.student_lr)
    args = DistillationConfig(**common, kd_loss=settings.kd_loss, temperature=settings.temperature,
                              alpha=settings.alpha, per_device_eval_batch_size=settings.batch_size, **features)
    timer = StepTimer()
    trainer = DistillationTrainer(student, args, train_dataset=to_prompt_completion(data["train"]),
                                  eval_dataset=to_prompt_completion(test), processing_class=tokenizer,
                                  teacher_model=teacher, callbacks=[timer])
    trainer.train()
    held_out = trainer.evaluate()
    trainer.save_model(str(out / name / "student"))
    accuracy = evaluate_reasoning(trainer.model, tokenizer, list(test["question"]), list(test["answer"]),
                                  settings.max_new_tokens).accuracy
    result = {
        "arm": name, "steps": settings.student_steps, **features,
        "accuracy": accuracy, "held_out_kl": held_out["eval_kd_loss"], "held_out_ce": held_out["eval_ce_loss"],
        "step_s_median": statistics.median(timer.wall[2:] or timer.wall), "train_s": sum(timer.wall),
        "load_average": load_average(),
    }
    tmp = result_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, result_file)
    shutil.rmtree(out / name / "run", ignore_errors=True)
    return result


def interleaved_step_times(arms: dict, demo: Path, out: Path, settings: DemoSettings, steps: int, init: str) -> dict:
    """Median forward+backward seconds per arm, the arms alternating on the same batches (fresh students)."""
    data = load_from_disk(str(demo / "data" / "dataset"))
    tokenizer = AutoTokenizer.from_pretrained(demo / "data" / "tokenizer")
    teacher = AutoModelForCausalLM.from_pretrained(demo / "teacher")
    trainers = {}
    for name, features in arms.items():
        common = _training_args(settings, out / "timing", steps, settings.student_lr)
        args = DistillationConfig(**common, kd_loss=settings.kd_loss, temperature=settings.temperature,
                                  alpha=settings.alpha, **features)
        student = make_demo_student(tokenizer, teacher, settings.seed, init)
        trainers[name] = DistillationTrainer(student, args, train_dataset=to_prompt_completion(data["train"]),
                                             processing_class=tokenizer, teacher_model=teacher)
    dataloader = next(iter(trainers.values())).get_train_dataloader()
    loader = (batch for _ in iter(int, 1) for batch in dataloader)  # epoch after epoch: a small demo has few batches
    times = {name: [] for name in arms}
    for step in range(steps + 1):  # the first round warms up
        batch = next(loader)
        items = (batch["labels"][:, 1:] != -100).sum()
        for name, trainer in trainers.items():
            trainer.model.train()
            began = time.perf_counter()
            trainer.training_step(trainer.model, batch, items)
            if step:
                times[name].append(time.perf_counter() - began)
            trainer.model.zero_grad(set_to_none=True)
            for module in trainer._extra_modules.values():
                module.zero_grad(set_to_none=True)
    shutil.rmtree(out / "timing", ignore_errors=True)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo-dir", type=Path, required=True, help="a finished `hf-distill demo` output directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=DemoSettings.student_steps)
    parser.add_argument("--n-test", type=int, default=DemoSettings.n_test)
    parser.add_argument("--feature-loss", default="nmse", choices=["mse", "cosine", "nmse"])
    parser.add_argument("--feature-weight", type=float, default=1.0)
    parser.add_argument("--feature-layers", default="uniform")
    parser.add_argument("--timing-steps", type=int, default=20, help="interleaved steps per arm for the overhead")
    parser.add_argument("--fresh", action="store_true", help="retrain arms already finished in --out")
    parser.add_argument("--init", choices=["random", "shrink"], default="random",
                        help="random: a 128x2 student (as measured in the README); shrink: the demo's current student")
    parser.add_argument("--kd-loss", default="forward_kl", help="as measured in the README (the demo now uses reverse_kl)")
    args = parser.parse_args(argv)
    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)
    settings = replace(DemoSettings(), student_steps=args.steps, kd_loss=args.kd_loss)
    arms = {
        "kd": {},
        "kd+features": dict(feature_weight=args.feature_weight, feature_loss=args.feature_loss,
                            feature_layers=args.feature_layers),
    }
    rows = [run_arm(name, features, args.demo_dir, args.out, settings, args.n_test, args.init)
            for name, features in arms.items()]
    print(f"\nstudent ({args.init} init) <- teacher {args.demo_dir / 'teacher'}, {settings.student_steps} steps x "
          f"batch {settings.batch_size}, alpha {settings.alpha}; test split: {args.n_test} problems")
    timing = interleaved_step_times(arms, args.demo_dir, args.out, settings, args.timing_steps, args.init)
    print(f"{'arm':<14}{'accuracy':>10}{'held-out KL':>13}{'held-out CE':>13}{'run step s':>12}"
          f"{'fwd+bwd s':>11}{'overhead':>10}")
    for row in rows:
        print(f"{row['arm']:<14}{row['accuracy']:>10.3f}{row['held_out_kl']:>13.4f}{row['held_out_ce']:>13.4f}"
              f"{row['step_s_median']:>12.3f}{timing[row['arm']]:>11.3f}{timing[row['arm']] / timing['kd']:>9.2f}x")
    print(f"overhead: median of {args.timing_steps} interleaved forward+backward steps per arm, batch "
          f"{settings.batch_size}; 'run step s': median optimizer step during each arm's own training run")
    print(f"feature arm: {arms['kd+features']}; machine load average at the end of each arm: "
          f"{', '.join(row['load_average'] for row in rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
