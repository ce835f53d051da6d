"""hf_distill.losses.cross_tokenizer: ULD and span-alignment distances against their naive formulas, and the chunked
fused loss against a dense autograd reference (values and gradients, odd shapes, accumulation)."""

from __future__ import annotations

import pytest
import torch
from cross_tokenizer_helpers import naive_loss, naive_uld

from hf_distill.losses.cross_tokenizer import (
    CrossTokenizerSpec,
    SharedVocabulary,
    TeacherRows,
    cross_tokenizer_loss,
    shared_token_kl,
    sorted_probability_distance,
)


def test_uld_golden_value():
    q, p = torch.tensor([[0.2, 0.5, 0.3]]), torch.tensor([[0.4, 0.6]])
    # sorted: (.5, .3, .2) vs (.6, .4, 0) -> .1 + .1 + .2
    torch.testing.assert_close(sorted_probability_distance(q, p), torch.tensor([0.4]))
    # top-1: |.5 - .6| + tails |.5 - .4|
    torch.testing.assert_close(sorted_probability_distance(q, p, top_k=1), torch.tensor([0.2]))


def test_uld_ignores_token_identity():
    q = torch.softmax(torch.randn(4, 9), -1)
    assert sorted_probability_distance(q, q[:, torch.randperm(9)]).abs().max() < 1e-6


def test_uld_top_k_is_a_lower_bound_that_becomes_exact():
    torch.manual_seed(0)
    q, p = torch.softmax(torch.randn(6, 17) * 2, -1), torch.softmax(torch.randn(6, 29) * 2, -1)
    exact = naive_uld(q, p)
    torch.testing.assert_close(sorted_probability_distance(q, p), exact)
    torch.testing.assert_close(sorted_probability_distance(q, p, top_k=29), exact)
    previous = torch.zeros(6)
    for k in (1, 3, 8, 17):
        approx = sorted_probability_distance(q, p, top_k=k)
        assert (approx <= exact + 1e-6).all() and (approx >= previous - 1e-6).all()
        previous = approx


def test_shared_token_kl_is_the_forward_kl_when_every_token_is_shared():
    torch.manual_seed(1)
    s, t = torch.randn(5, 11).log_softmax(-1), torch.randn(5, 11).log_softmax(-1)
    ids = torch.arange(11)
    forward_kl = (t.exp() * (t - s)).sum(-1)
    torch.testing.assert_close(shared_token_kl(s, t, ids, ids), forward_kl)


def test_shared_token_kl_is_zero_only_where_the_shared_probabilities_match():
    torch.manual_seed(2)
    student = torch.randn(3, 7).log_softmax(-1)
    teacher = torch.randn(3, 9).log_softmax(-1)
    student_ids, teacher_ids = torch.tensor([0, 2, 5]), torch.tensor([8, 1, 4])
    assert (shared_token_kl(student, teacher, student_ids, teacher_ids) > 0).all()
    # a teacher that agrees with the student on the shared tokens (and holds its other mass elsewhere)
    agreeing = torch.full((3, 9), 0.0)
    agreeing[:, teacher_ids] = student[:, student_ids].exp()
    agreeing[:, 0] = 1 - agreeing.sum(-1)
    torch.testing.assert_close(shared_token_kl(student, agreeing.log(), student_ids, teacher_ids),
                               torch.zeros(3), atol=1e-6, rtol=0)


def _problem(seed=0, n=47, hidden=13, teacher_hidden=11, vs=123, vt=157, shared=60):
    g = torch.Generator().manual_seed(seed)
    student_hidden = torch.randn(n, hidden, generator=g, dtype=torch.float64)
    weight = torch.randn(vs, hidden, generator=g, dtype=torch.float64) * 0.5
    bias = torch.randn(vs, generator=g, dtype=torch.float64) * 0.1
    aligned = torch.rand(n, generator=g) < 0.7
    index = torch.full((n,), -1, dtype=torch.long)
    index[aligned] = torch.arange(int(aligned.sum()))
    teacher = TeacherRows(index, torch.randn(int(aligned.sum()), teacher_hidden, generator=g, dtype=torch.float64),
                          torch.randn(vt, teacher_hidden, generator=g, dtype=torch.float64), None)
    student_ids = torch.randperm(vs, generator=g)[:shared]
    teacher_ids = torch.randperm(vt, generator=g)[:shared]
    vocab = SharedVocabulary.from_pairs(dict(zip(student_ids.tolist(), teacher_ids.tolist())), vs, vt)
    targets = torch.randint(0, vs, (n,), generator=g)
    return student_hidden, weight, bias, teacher, targets, vocab


@pytest.mark.parametrize("method", ["uld", "align"])
def test_chunked_loss_matches_the_dense_reference_in_value_and_gradients(method):
    hidden, weight, bias, teacher, targets, vocab = _problem()
    spec = CrossTokenizerSpec(method, temperature=2.0, alpha=0.3, top_k=None, chunk_size=8)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    output = cross_tokenizer_loss(*leaves, teacher, targets, vocab, spec, num_items_in_batch=60)
    output.loss.backward()
    reference = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    student_logits = reference[0] @ reference[1].T + reference[2]
    teacher_logits = teacher.hidden @ teacher.weight.T
    want, want_kd = naive_loss(student_logits, teacher_logits, teacher.index, targets, vocab, method, 2.0, 0.3, 60)
    want.backward()
    torch.testing.assert_close(output.loss.double(), want.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(output.kd_sum, want_kd.detach())
    assert output.num_tokens == 47
    for got, ref in zip(leaves, reference):
        torch.testing.assert_close(got.grad, ref.grad, rtol=1e-4, atol=1e-7)  # float32 loss math


def test_chunk_size_and_accumulated_micro_batches_do_not_change_the_gradient():
    hidden, weight, bias, teacher, targets, vocab = _problem(seed=3, n=40)
    spec = CrossTokenizerSpec("align", temperature=1.0, alpha=0.5, top_k=4, chunk_size=None)
    whole = weight.clone().requires_grad_()
    cross_tokenizer_loss(hidden, whole, bias, teacher, targets, vocab, spec).loss.backward()
    parts = weight.clone().requires_grad_()
    small_chunks = CrossTokenizerSpec("align", temperature=1.0, alpha=0.5, top_k=4, chunk_size=3)
    for rows in torch.arange(40).split(10):  # four micro-batches, one normaliser: the tokens of all four
        part = TeacherRows(teacher.index[rows], teacher.hidden, teacher.weight, None)
        cross_tokenizer_loss(hidden[rows], parts, bias, part, targets[rows], vocab, small_chunks,
                             num_items_in_batch=40).loss.backward()
    torch.testing.assert_close(parts.grad, whole.grad)


def test_top1_agreement_counts_aligned_rows_whose_top_tokens_are_spelled_alike():
    vocab = SharedVocabulary.from_pairs({0: 2, 1: 0}, student_size=3, teacher_size=3)
    student_logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0]])
    teacher = TeacherRows(torch.tensor([0, 1, 2, -1]), torch.tensor([[0, 0, 5.0], [0, 0, 5.0], [5.0, 0, 0]]), None,
                          None)
    output = cross_tokenizer_loss(student_logits, None, None, teacher, torch.tensor([0, 1, 2, 0]), vocab,
                                  CrossTokenizerSpec("uld", top_k=None))
    # row 0: student 0 -> teacher 2 == teacher's top; row 1: 1 -> 0 vs 2; row 2: 2 has no counterpart; row 3 unaligned
    assert output.top1_agree.item() == 1
