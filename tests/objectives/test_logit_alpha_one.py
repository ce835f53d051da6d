"""alpha == 1 (CE only): the logit objective asks the teacher for nothing, and still logs sensible numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import make_llama

from hf_distill.losses import LossSpec
from hf_distill.objectives.logit import logit_distillation

VOCAB = 97


class _TeacherThatMustNotRun:
    def signal(self, *args, **kwargs):
        raise AssertionError("the teacher was asked for its signal")


def _batch():
    ids = torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :4] = -100  # a masked prompt
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_alpha_one_computes_the_ce_without_the_teacher_and_logs_kd_as_the_ce_and_top1_as_token_accuracy():
    student = make_llama(VOCAB, 32, 2, seed=1)
    inputs = _batch()
    states = student.model(input_ids=inputs["input_ids"]).last_hidden_state
    kd = logit_distillation(student, states, True, inputs, _TeacherThatMustNotRun(), VOCAB, LossSpec(alpha=1.0), None)
    logits = student(input_ids=inputs["input_ids"]).logits[:, :-1]
    targets = inputs["labels"][:, 1:]
    expected = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=-100)
    out = kd.output
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.kd_sum / out.num_tokens, out.ce_sum / out.num_tokens, rtol=1e-5, atol=1e-5)
    mask = targets != -100
    accuracy = (logits.argmax(-1)[mask] == targets[mask]).float().mean()
    assert float(out.top1_agree) / out.num_tokens == pytest.approx(float(accuracy))
    out.loss.backward()  # and it trains
    assert student.lm_head.weight.grad.abs().sum() > 0


def test_any_weight_on_the_kd_term_still_asks_the_teacher():
    student = make_llama(VOCAB, 32, 2, seed=1)
    inputs = _batch()
    states = student.model(input_ids=inputs["input_ids"]).last_hidden_state
    with pytest.raises(AssertionError, match="asked for its signal"):
        logit_distillation(student, states, True, inputs, _TeacherThatMustNotRun(), VOCAB, LossSpec(alpha=0.99), None)
