"""Co-distillation: the teacher trains with its own learning rate on its CE + KD from the detached student."""

from __future__ import annotations

import pytest
import torch
from helpers import distillation_trainer, make_llama, tiny_config
from transformers import AutoModelForCausalLM

from hf_distill.losses import LossSpec
from hf_distill.objectives.codistill import teacher_loss


def _trainer(tmp_path, tokenizer, teacher=None, **config):
    return distillation_trainer(tmp_path, tokenizer, teacher=teacher, **{"co_distill": True, **config})


def test_teacher_loss_mirrors_the_student_loss():
    """With the roles swapped, the teacher's KD term is D(student || teacher) and its CE is its own."""
    torch.manual_seed(0)
    n, h, v = 11, 8, 13
    teacher, student = torch.nn.Linear(h, v, bias=False), torch.nn.Linear(h, v, bias=False)
    teacher_rows = torch.randn(n, h, requires_grad=True)
    student_rows = torch.randn(n, h, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    spec = LossSpec("forward_kl", 1.0, 0.3, 0.5, 4)
    fake = lambda linear: type("M", (), {"get_output_embeddings": lambda self: linear})()  # noqa: E731
    out = teacher_loss(teacher_rows, fake(teacher), True, student_rows, fake(student), True, v, targets, spec, n)
    t_logits, s_logits = teacher(teacher_rows), student(student_rows)
    kd = torch.nn.functional.kl_div(t_logits.log_softmax(-1), s_logits.log_softmax(-1), log_target=True,
                                    reduction="sum")
    ce = torch.nn.functional.cross_entropy(t_logits, targets, reduction="sum")
    assert out.kd_sum.item() == pytest.approx(kd.item(), rel=1e-5)
    assert out.ce_sum.item() == pytest.approx(ce.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(((0.3 * ce + 0.7 * kd) / n).item(), rel=1e-5)
    out.loss.backward()
    assert teacher_rows.grad.abs().sum() > 0 and teacher.weight.grad.abs().sum() > 0
    assert student_rows.grad is None and student.weight.grad is None  # the student side is detached


def test_teacher_trains_with_its_own_learning_rate_and_is_saved(tmp_path, tokenizer):
    original = make_llama(len(tokenizer), hidden=64, layers=2, seed=2)
    trainer = _trainer(tmp_path, tokenizer, teacher=make_llama(len(tokenizer), hidden=64, layers=2, seed=2),
                       learning_rate=1e-3, teacher_learning_rate=5e-3)
    optimizer = trainer.create_optimizer()
    teacher_params = {id(p) for p in trainer.teacher_model.parameters()}
    groups = [g for g in optimizer.param_groups if {id(p) for p in g["params"]} & teacher_params]
    assert len(groups) == 1 and groups[0]["lr"] == 5e-3 and len(groups[0]["params"]) == len(teacher_params)
    assert {g["lr"] for g in optimizer.param_groups if g is not groups[0]} == {1e-3}
    trainer.train()
    assert "teacher_kd_loss" in trainer.state.log_history[0]
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "teacher")
    changed = [not torch.equal(a, b) for a, b in zip(saved.parameters(), original.parameters())]
    assert all(changed)  # every teacher tensor moved, including its lm_head
    assert (tmp_path / "out" / "teacher" / "tokenizer.json").is_file()


def test_teacher_gets_gradients_only_with_co_distill(tmp_path, tokenizer):
    for co_distill in (True, False):
        trainer = _trainer(tmp_path, tokenizer, co_distill=co_distill)
        batch = next(iter(trainer.get_train_dataloader()))
        trainer.compute_loss(trainer.model, batch).backward()
        grads = [p.grad for p in trainer.teacher_model.parameters()]
        if co_distill:
            assert all(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None for g in grads)
        assert trainer.model.lm_head.weight.grad.abs().sum() > 0


def test_resume_restores_the_co_trained_teacher(tmp_path, tokenizer):
    config = dict(max_steps=4, save_strategy="steps", save_steps=2, learning_rate=1e-2)
    full = _trainer(tmp_path, tokenizer, **config)
    full.train()
    assert (tmp_path / "out" / "checkpoint-2" / "codistill_teacher.safetensors").is_file()
    resumed = _trainer(tmp_path, tokenizer, **config)  # built from the original teacher weights
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    for a, b in zip(resumed.teacher_model.parameters(), full.teacher_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)  # weights and its optimizer state came back: the same two steps


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(co_distill=False, teacher_learning_rate=1e-3), "set co_distill=True"),
        (dict(teacher_learning_rate=0.0), "teacher_learning_rate must be > 0"),
        (dict(teacher_cache="/nonexistent"), "need a live teacher"),
    ],
)
def test_config_rejects_bad_co_distill_settings(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(tmp_path, **{"co_distill": True, **overrides})


def test_low_precision_teacher_is_refused(tmp_path, tokenizer):
    teacher = make_llama(len(tokenizer), hidden=64, layers=2).to(torch.bfloat16)
    with pytest.raises(ValueError, match="teacher_dtype='float32'"):
        _trainer(tmp_path, tokenizer, teacher=teacher)


def test_codistill_term_is_the_teacher_loss_at_the_students_loss_tokens():
    from types import SimpleNamespace

    from hf_distill.objectives.codistill import codistill_term
    from hf_distill.objectives.logit import LogitKD

    torch.manual_seed(0)
    b, t, h, v = 2, 6, 8, 13
    teacher, student = torch.nn.Linear(h, v, bias=False), torch.nn.Linear(h, v, bias=False)
    fake = lambda linear: type("M", (), {"get_output_embeddings": lambda self: linear})()  # noqa: E731
    mask = torch.tensor([[True, False, True, True, False], [False, True, True, False, True]])  # (B, T-1)
    states, student_rows = torch.randn(b, t, h), torch.randn(int(mask.sum()), h)
    targets, spec = torch.randint(0, v, (int(mask.sum()),)), LossSpec("forward_kl", 1.0, 0.3, 0.5, 4)
    logit = LogitKD(None, mask, student_rows, targets, 9.0)
    live = SimpleNamespace(unwrapped=fake(teacher), use_head=True)
    loss, sums = codistill_term(live, states, logit, fake(student), True, v, spec)
    want = teacher_loss(states[:, :-1][mask], fake(teacher), True, student_rows, fake(student), True, v, targets, spec,
                        9.0)
    torch.testing.assert_close(loss, want.loss)
    assert sums.keys() == {"teacher_kd_loss", "teacher_ce_loss"}
    torch.testing.assert_close(sums["teacher_kd_loss"], want.kd_sum)


def test_codistill_settings_are_checked_beside_co_distillation():
    from types import SimpleNamespace

    from hf_distill.objectives.codistill import check_codistill_settings

    check_codistill_settings(SimpleNamespace(co_distill=True, teacher_learning_rate=1e-3, teacher_cache=None))
    with pytest.raises(ValueError, match="set co_distill=True"):
        check_codistill_settings(SimpleNamespace(co_distill=False, teacher_learning_rate=1e-3, teacher_cache=None))
