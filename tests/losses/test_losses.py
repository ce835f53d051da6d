"""Loss math: every divergence against an independent formula, chunked == dense, T and normalisation rules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hf_distill.losses import (
    DIVERGENCES,
    LossSpec,
    fused_distillation_loss,
    get_divergence,
)
from hf_distill.losses.targets import DenseTeacherSignal, NonFiniteTeacherError


def _probs_reference(name: str, p: torch.Tensor, q: torch.Tensor, beta: float) -> torch.Tensor:
    """Textbook formulas on probabilities (p teacher, q student), written independently of the module."""

    def kl(a, b):
        return (a * (a.log() - b.log())).sum(-1)

    if name == "forward_kl":
        return kl(p, q)
    if name == "reverse_kl":
        return kl(q, p)
    if name == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    if name == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    if name == "skew_forward_kl":
        return kl(p, beta * p + (1 - beta) * q)
    if name == "skew_reverse_kl":
        return kl(q, beta * q + (1 - beta) * p)
    raise AssertionError(name)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_divergence_matches_probability_formula(name, beta):
    torch.manual_seed(0)
    s, t = torch.randn(7, 23, dtype=torch.float64), torch.randn(7, 23, dtype=torch.float64) * 2
    got = get_divergence(name)(s.log_softmax(-1), t.log_softmax(-1), beta)
    want = _probs_reference(name, t.softmax(-1), s.softmax(-1), beta)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_forward_kl_golden_value():
    teacher = torch.tensor([[0.5, 0.5]]).log()
    student = torch.tensor([[0.25, 0.75]]).log()
    golden = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)  # 0.14384...
    assert get_divergence("forward_kl")(student, teacher).item() == pytest.approx(golden, rel=1e-6)
    assert get_divergence("tvd")(student, teacher).item() == pytest.approx(0.25, rel=1e-6)


def test_forward_kl_equals_torch_kl_div():
    torch.manual_seed(1)
    s, t = torch.randn(5, 11).log_softmax(-1), torch.randn(5, 11).log_softmax(-1)
    want = F.kl_div(s, t, log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(get_divergence("forward_kl")(s, t), want)


def test_jsd_end_points_follow_trl_semantics():
    torch.manual_seed(2)
    s, t = torch.randn(4, 9).log_softmax(-1), torch.randn(4, 9).log_softmax(-1)
    torch.testing.assert_close(get_divergence("jsd")(s, t, 0.0), get_divergence("forward_kl")(s, t))
    torch.testing.assert_close(get_divergence("jsd")(s, t, 1.0), get_divergence("reverse_kl")(s, t))


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_divergence_is_zero_for_identical_and_positive_otherwise(name):
    torch.manual_seed(3)
    logp = torch.randn(6, 13).log_softmax(-1)
    other = torch.randn(6, 13).log_softmax(-1)
    assert get_divergence(name)(logp, logp, 0.3).abs().max() < 1e-6
    assert (get_divergence(name)(logp, other, 0.3) > 1e-4).all()


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_gradients_stay_finite_for_extreme_logits(name):
    student = (torch.randn(4, 17) * 80).requires_grad_()
    teacher = torch.randn(4, 17) * 80
    loss = get_divergence(name)(student.log_softmax(-1), teacher.log_softmax(-1), 0.5).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


def test_unknown_loss_name_lists_choices():
    with pytest.raises(ValueError, match="forward_kl.*reverse_kl"):
        get_divergence("kl_forward")


# ---- the chunked, fused objective -------------------------------------------------------------------------------


def _naive_objective(s_logits, t_logits, targets, spec, vocab, normalizer):
    """The 3-line definition from the module docstring, at full width."""
    s_logp = (s_logits[:, :vocab] / spec.temperature).log_softmax(-1)
    t_logp = (t_logits[:, :vocab] / spec.temperature).log_softmax(-1)
    kd = spec.temperature**2 * _probs_reference(spec.divergence, t_logp.exp(), s_logp.exp(), spec.beta).sum()
    ce = F.cross_entropy(s_logits, targets, reduction="sum")
    return (spec.alpha * ce + (1 - spec.alpha) * kd) / normalizer


def _problem(n=141, hidden=24, vocab=123, teacher_rows=131, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g, dtype=dtype).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=g, dtype=dtype) * 0.3).requires_grad_()
    b = (torch.randn(vocab, generator=g, dtype=dtype) * 0.1).requires_grad_()
    th = torch.randn(n, 40, generator=g, dtype=dtype)
    tw = torch.randn(teacher_rows, 40, generator=g, dtype=dtype) * 0.3
    y = torch.randint(0, vocab, (n,), generator=g)
    return h, w, b, th, tw, y


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
@pytest.mark.parametrize("chunk", [None, 1, 47, 1000])
def test_chunked_matches_dense_loss_and_gradients(name, chunk):
    # 3 x 47 tokens, a 123-token shared vocabulary, a teacher padded to 131 rows
    h, w, b, th, tw, y = _problem()
    spec = LossSpec(name, temperature=1.7, alpha=0.3, beta=0.4, chunk_size=chunk)
    out = fused_distillation_loss(h, w, b, DenseTeacherSignal(th, 123, tw), y, spec, num_items_in_batch=200)
    grads = torch.autograd.grad(out.loss, [h, w, b])

    s_logits = F.linear(h, w, b)
    t_logits = th @ tw.T
    want = _naive_objective(s_logits, t_logits, y, spec, 123, 200)
    want_grads = torch.autograd.grad(want, [h, w, b])
    torch.testing.assert_close(out.loss.double(), want, rtol=1e-5, atol=1e-7)
    for got, ref in zip(grads, want_grads):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-8)


def test_logits_input_matches_hidden_state_input():
    h, w, b, th, tw, y = _problem(n=30)
    spec = LossSpec("reverse_kl", 2.0, 0.5, 0.5, chunk_size=7)
    teacher = DenseTeacherSignal(th, 123, tw)
    from_hidden = fused_distillation_loss(h, w, b, teacher, y, spec)
    logits = F.linear(h, w, b).detach().requires_grad_()
    from_logits = fused_distillation_loss(logits, None, None, DenseTeacherSignal(th @ tw.T, 123), y, spec)
    torch.testing.assert_close(from_logits.loss, from_hidden.loss)
    # d loss / d hidden == (d loss / d logits) @ W
    (grad_logits,) = torch.autograd.grad(from_logits.loss, [logits])
    (grad_hidden,) = torch.autograd.grad(from_hidden.loss, [h])
    torch.testing.assert_close(grad_logits @ w.detach(), grad_hidden)


def test_float32_chunked_matches_float64_reference():
    h, w, b, th, tw, y = _problem(dtype=torch.float32)
    spec = LossSpec("jsd", 1.0, 0.0, 0.5, chunk_size=16)
    out = fused_distillation_loss(h, w, b, DenseTeacherSignal(th, 123, tw), y, spec)
    want = _naive_objective(F.linear(h, w, b).double(), (th @ tw.T).double(), y, spec, 123, y.numel())
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_hard_label_term_ignores_temperature_and_kd_gets_t_squared():
    h, w, b, th, tw, y = _problem(n=20)
    teacher = DenseTeacherSignal(th, 123, tw)
    ce_only = [fused_distillation_loss(h, w, b, teacher, y, LossSpec("forward_kl", t, 1.0)).loss for t in (1.0, 4.0)]
    torch.testing.assert_close(ce_only[0], ce_only[1])  # alpha = 1: temperature must not touch the CE
    kd_only = fused_distillation_loss(h, w, b, teacher, y, LossSpec("forward_kl", 4.0, 0.0)).loss
    s_logp = (F.linear(h, w, b) / 4).log_softmax(-1)
    t_logp = ((th @ tw.T)[:, :123] / 4).log_softmax(-1)
    plain_kl = F.kl_div(s_logp, t_logp, log_target=True, reduction="sum") / 20
    torch.testing.assert_close(kd_only.double(), 16 * plain_kl.double(), rtol=1e-6, atol=1e-8)


def test_loss_is_a_mean_over_loss_tokens_unlike_the_batchmean_seed_formula():
    """The seed snippet divides by B only, so its loss grows with sequence length; ours is per loss token."""
    torch.manual_seed(4)
    batch, vocab, temperature = 2, 50, 2.0
    per_length = {}
    base_s, base_t = torch.randn(batch, 8, vocab), torch.randn(batch, 8, vocab)
    for seq in (8, 32):
        s = base_s.repeat(1, seq // 8, 1)  # the same tokens, repeated: a fair per-token loss stays the same
        t = base_t.repeat(1, seq // 8, 1)
        seed = F.kl_div(
            F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="batchmean"
        ) * temperature**2
        ours = fused_distillation_loss(
            s.reshape(-1, vocab), None, None, DenseTeacherSignal(t.reshape(-1, vocab), vocab),
            torch.zeros(batch * seq, dtype=torch.long), LossSpec("forward_kl", temperature, alpha=0.0),
        ).loss
        per_length[seq] = (seed.item(), ours.item())
    assert per_length[32][0] == pytest.approx(4 * per_length[8][0], rel=1e-5)  # seed: x4 for 4x the tokens
    assert per_length[32][1] == pytest.approx(per_length[8][1], rel=1e-5)  # ours: unchanged


def test_normaliser_is_num_items_in_batch_so_micro_batches_sum_to_the_full_batch():
    h, w, b, th, tw, y = _problem(n=40)
    spec = LossSpec("forward_kl", 1.5, 0.2, chunk_size=8)
    full = fused_distillation_loss(h, w, b, DenseTeacherSignal(th, 123, tw), y, spec)
    full_grad = torch.autograd.grad(full.loss, [w])[0]
    parts, grad = 0.0, torch.zeros_like(w)
    for rows in (slice(0, 5), slice(5, 30), slice(30, 40)):  # uneven micro-batches
        part = fused_distillation_loss(h[rows], w, b, DenseTeacherSignal(th[rows], 123, tw), y[rows], spec, 40)
        parts = parts + part.loss
        grad += torch.autograd.grad(part.loss, [w])[0]
    torch.testing.assert_close(parts, full.loss)
    torch.testing.assert_close(grad, full_grad)


def test_no_loss_tokens_gives_finite_zero():
    h = torch.zeros(0, 8, requires_grad=True)
    out = fused_distillation_loss(h, torch.randn(10, 8), None, DenseTeacherSignal(torch.zeros(0, 8), 10,
                                  torch.randn(10, 8)), torch.zeros(0, dtype=torch.long), LossSpec())
    assert out.loss.item() == 0.0 and out.num_tokens == 0


def test_non_finite_teacher_logits_raise_with_fix():
    logits = torch.randn(4, 10)
    logits[2, 3] = float("nan")
    with pytest.raises(NonFiniteTeacherError, match="teacher_dtype"):
        fused_distillation_loss(torch.randn(4, 10), None, None, DenseTeacherSignal(logits, 10),
                                torch.zeros(4, dtype=torch.long), LossSpec())


@pytest.mark.parametrize(
    "kwargs, message",
    [({"temperature": 0.0}, "temperature"), ({"alpha": 1.5}, "alpha"), ({"beta": -0.1}, "beta"),
     ({"chunk_size": 0}, "chunk_size"), ({"divergence": "kld"}, "Unknown distillation loss")],
)
def test_loss_spec_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LossSpec(**kwargs)


def test_top1_agreement_counts_matching_argmax():
    student = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    teacher = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 4.0], [0.0, 0.0, 9.0]])
    out = fused_distillation_loss(student, None, None, DenseTeacherSignal(teacher, 3), torch.zeros(3, dtype=torch.long),
                                  LossSpec())
    assert out.top1_agree.item() == 2


# ---- the hand-written forward-KL path (hf_distill.losses.dense) and gradient bookkeeping --------------------------


@pytest.mark.parametrize("name, beta", [("forward_kl", 0.5), ("jsd", 0.0), ("reverse_kl", 0.5)])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("student_rows", [123, 130])  # 130: the student's embedding has 7 padding rows
def test_chunked_matches_dense_with_padded_student_vocab(name, beta, temperature, student_rows):
    h, _, _, th, tw, y = _problem(n=47)
    g = torch.Generator().manual_seed(1)
    w = (torch.randn(student_rows, 24, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    b = (torch.randn(student_rows, generator=g, dtype=torch.float64) * 0.1).requires_grad_()
    y[:3] = student_rows - 1  # hard labels may point at a padding row: the CE is over the student's full vocab
    spec = LossSpec(name, temperature=temperature, alpha=0.3, beta=beta, chunk_size=10)
    out = fused_distillation_loss(h, w, b, DenseTeacherSignal(th, 123, tw), y, spec, num_items_in_batch=60)
    grads = torch.autograd.grad(out.loss, [h, w, b])

    reference = LossSpec("forward_kl", temperature, 0.3) if name == "jsd" else spec  # TRL: jsd at beta 0 = KL(p||q)
    want = _naive_objective(F.linear(h, w, b), th @ tw.T, y, reference, 123, 60)
    want_grads = torch.autograd.grad(want, [h, w, b])
    torch.testing.assert_close(out.loss.double(), want, rtol=1e-5, atol=1e-7)
    for got, ref in zip(grads, want_grads):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", ["forward_kl", "tvd"])
def test_logits_input_and_teacher_logits_are_not_modified(name):
    h, w, b, th, tw, y = _problem(n=30)
    logits = F.linear(h, w, b).detach().requires_grad_()
    teacher_logits = th @ tw.T
    before = logits.detach().clone(), teacher_logits.clone()
    out = fused_distillation_loss(logits, None, None, DenseTeacherSignal(teacher_logits, 123), y,
                                  LossSpec(name, chunk_size=7))
    out.loss.backward()
    assert torch.equal(logits.detach(), before[0]) and torch.equal(teacher_logits, before[1])


def test_float32_forward_kl_matches_float64_reference():
    h, w, b, th, tw, y = _problem(dtype=torch.float32)
    spec = LossSpec("forward_kl", 1.0, 0.5, chunk_size=16)
    out = fused_distillation_loss(h, w, b, DenseTeacherSignal(th, 123, tw), y, spec)
    grad_h, grad_w = torch.autograd.grad(out.loss, [h, w])
    h64, w64, b64 = (t.detach().double().requires_grad_() for t in (h, w, b))
    want = _naive_objective(F.linear(h64, w64, b64), (th @ tw.T).double(), y, spec, 123, y.numel())
    want_h, want_w = torch.autograd.grad(want, [h64, w64])
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(grad_h.double(), want_h, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_w.double(), want_w, rtol=1e-4, atol=1e-6)


def test_frozen_head_gives_only_the_hidden_state_gradient_and_no_grad_gives_the_same_loss():
    h, w, b, th, tw, y = _problem(n=30)
    teacher, spec = DenseTeacherSignal(th, 123, tw), LossSpec("forward_kl", 1.0, 0.3, chunk_size=8)
    frozen = fused_distillation_loss(h, w.detach(), b.detach(), teacher, y, spec)
    (grad_h,) = torch.autograd.grad(frozen.loss, [h])
    full = fused_distillation_loss(h, w, b, teacher, y, spec)
    torch.testing.assert_close(grad_h, torch.autograd.grad(full.loss, [h])[0])
    with torch.no_grad():
        evaluated = fused_distillation_loss(h, w, b, teacher, y, spec)
    assert not evaluated.loss.requires_grad
    torch.testing.assert_close(evaluated.loss, full.loss.detach())
    torch.testing.assert_close(evaluated.top1_agree, full.top1_agree)


def test_a_second_backward_through_the_loss_fails_with_a_clear_error():
    h, w, b, th, tw, y = _problem(n=10)
    out = fused_distillation_loss(h, w, b, DenseTeacherSignal(th, 123, tw), y, LossSpec())
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):
        out.loss.backward()


# ---- the default chunk size: one rule (losses.chunked.default_chunk_size) for LossSpec and the trainer -------------
def test_default_chunk_size_rule():
    from hf_distill.losses import default_chunk_size

    assert default_chunk_size(32768) == 128 and default_chunk_size(262144) == 128  # 2**25 / 262144 = 128
    assert default_chunk_size(2**20) == 64  # never under 64
    assert default_chunk_size(32768, sparse=True) == 128 and default_chunk_size(2**16, sparse=True) == 64


def test_loss_spec_auto_chunks_by_the_rule_the_trainer_uses(monkeypatch, tmp_path):
    from hf_distill import DistillationConfig
    from hf_distill.losses import chunked

    assert LossSpec().chunk_size == "auto"
    config = DistillationConfig(output_dir=str(tmp_path), report_to=[])
    for sparse in (False, True):
        assert config.loss_spec(123, sparse).chunk_size == chunked.default_chunk_size(123, sparse)
    asked = []
    monkeypatch.setattr(chunked, "default_chunk_size", lambda vocab, sparse=False: asked.append((vocab, sparse)) or 47)
    h, w, b, th, tw, y = _problem()
    teacher = DenseTeacherSignal(th, 123, tw)
    auto = fused_distillation_loss(h, w, b, teacher, y, LossSpec("reverse_kl"))
    explicit = fused_distillation_loss(h, w, b, teacher, y, LossSpec("reverse_kl", chunk_size=47))
    assert asked == [(123, False)]
    torch.testing.assert_close(auto.loss, explicit.loss, rtol=0, atol=0)  # the same chunks, so the same sums


@pytest.mark.parametrize("chunk_size", ["auto", None, 1, 1024])
def test_loss_spec_accepts_auto_none_and_positive_chunk_sizes(chunk_size):
    assert LossSpec(chunk_size=chunk_size).chunk_size == chunk_size


def test_loss_spec_rejects_other_chunk_size_strings():
    with pytest.raises(ValueError, match="'auto' or None"):
        LossSpec(chunk_size="big")
