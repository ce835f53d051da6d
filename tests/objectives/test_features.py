"""Hidden-state / attention-map alignment: the losses, layer maps, projectors, and their life in the trainer."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import distillation_trainer, make_llama, prompt_completion, tiny_config
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaConfig

from hf_distill import DistillationTrainer
from hf_distill.features import (
    FeatureAligner,
    parse_layer_pairs,
    resolve_layer_pairs,
    uniform_layer_pairs,
)
from hf_distill.losses.features import (
    FEATURE_LOSSES,
    attention_map_loss,
    cosine_loss,
    mse_loss,
    normalized_mse_loss,
)


# --- pure losses ---------------------------------------------------------------------------------------------------
def test_losses_match_naive_reference_on_odd_shapes():
    torch.manual_seed(0)
    s, t = torch.randn(47, 123), torch.randn(47, 123)
    assert torch.allclose(mse_loss(s, t), F.mse_loss(s, t, reduction="none").mean(-1).sum())
    cos = sum(1 - torch.dot(a, b) / (a.norm() * b.norm()) for a, b in zip(s, t))
    assert torch.allclose(cosine_loss(s, t), cos, atol=1e-4)
    z = lambda x: (x - x.mean(-1, keepdim=True)) / x.var(-1, unbiased=False, keepdim=True).add(1e-6).sqrt()  # noqa
    assert torch.allclose(normalized_mse_loss(s, t), ((z(s) - z(t)) ** 2).mean(-1).sum(), atol=1e-4)


def test_loss_golden_values():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    assert mse_loss(s, t).item() == pytest.approx(1.0)  # row 1: (1 + 1) / 2, row 2: 0
    assert cosine_loss(s, t).item() == pytest.approx(1.0)  # orthogonal, then identical


def test_nmse_ignores_scale_and_offset_but_mse_does_not():
    torch.manual_seed(0)
    s, t = torch.randn(5, 16), torch.randn(5, 16)
    assert torch.allclose(normalized_mse_loss(3.0 * s + 1.0, t), normalized_mse_loss(s, t), atol=1e-4)
    assert mse_loss(3.0 * s + 1.0, t) > 2 * mse_loss(s, t)


def test_attention_map_loss_is_kl_per_head_averaged():
    torch.manual_seed(0)
    causal = torch.ones(6, 6).tril().bool()  # (T, T): query rows, key columns
    def attn(x):  # noqa: E306
        return x.masked_fill(~causal, float("-inf")).softmax(-1).permute(1, 0, 2)  # (N=6, heads, T)
    t, s = attn(torch.randn(6, 3, 6).permute(1, 0, 2)), attn(torch.randn(6, 3, 6).permute(1, 0, 2))
    assert attention_map_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)  # masked keys (0 * log 0) stay finite
    naive = sum(F.kl_div(s[n, h][causal[n]].log(), t[n, h][causal[n]], reduction="sum") for n in range(6)
                for h in range(3)) / 3
    assert attention_map_loss(s, t).item() == pytest.approx(naive.item(), rel=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        attention_map_loss(s[:, :2], t)


# --- layer maps ----------------------------------------------------------------------------------------------------
def test_uniform_map_spreads_student_layers_and_ends_at_the_last():
    assert uniform_layer_pairs(4, 2) == [(2, 1), (4, 2)]
    assert uniform_layer_pairs(12, 4) == [(3, 1), (6, 2), (9, 3), (12, 4)]
    assert resolve_layer_pairs("uniform", 6, 3) == [(2, 1), (4, 2), (6, 3)]


def test_explicit_map_is_parsed_and_checked_against_depths():
    assert parse_layer_pairs("0:0, 2:1,4:2") == [(0, 0), (2, 1), (4, 2)]
    assert parse_layer_pairs([[1, 1]]) == [(1, 1)]
    for bad in ("", "2-1", "a:b", "1:2:3", "-1:0"):
        with pytest.raises(ValueError, match="teacher:student"):
            parse_layer_pairs(bad)
    with pytest.raises(ValueError, match="out of range"):
        resolve_layer_pairs("5:1", 4, 2)


# --- aligner -------------------------------------------------------------------------------------------------------
def _states(batch=2, seq=7, width=16, layers=3, seed=0):
    torch.manual_seed(seed)
    return tuple(torch.randn(batch, seq, width) for _ in range(layers + 1))


@pytest.mark.parametrize("loss", sorted(FEATURE_LOSSES))
def test_identical_states_through_identity_projector_give_zero_loss(loss):
    states = _states()
    mask = torch.rand(2, 6) > 0.3
    aligner = FeatureAligner([(0, 0), (2, 2), (3, 3)], 16, 16, loss=loss, projector="identity")
    hidden, attention = aligner(states, states, mask)
    assert hidden.item() == pytest.approx(0.0, abs=1e-4)
    different, _ = aligner(states, _states(seed=1), mask)
    assert different.item() > 0.1


def test_aligner_weights_pairs_and_uses_only_loss_tokens():
    student, teacher = _states(width=8), _states(width=8, seed=1)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 2] = mask[1, 4] = True
    aligner = FeatureAligner([(1, 1), (2, 2)], 8, 8, loss="mse", pair_weights=[2.0, 0.5], projector="identity")
    hidden, _ = aligner(student, teacher, mask)
    expected = sum(w * mse_loss(torch.stack([student[s][0, 2], student[s][1, 4]]),
                                torch.stack([teacher[t][0, 2], teacher[t][1, 4]]))
                   for (t, s), w in (((1, 1), 2.0), ((2, 2), 0.5)))
    assert hidden.item() == pytest.approx(expected.item(), rel=1e-5)


def test_identity_projector_refuses_different_widths():
    with pytest.raises(ValueError, match="feature_projector='linear'"):
        FeatureAligner([(1, 1)], 8, 16, projector="identity")


# --- in the trainer ------------------------------------------------------------------------------------------------
def _trainer(tmp_path, tokenizer, student=None, teacher=None, **config):
    student = student if student is not None else make_llama(len(tokenizer), hidden=32, layers=2, seed=1)
    teacher = teacher if teacher is not None else make_llama(len(tokenizer), hidden=64, layers=4, seed=2)
    return distillation_trainer(tmp_path, tokenizer, student, teacher, **{"feature_weight": 1.0, **config})


def _one_backward(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss


def test_gradients_reach_projector_and_student_never_the_frozen_teacher(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, feature_layers="0:0,2:1,4:2")
    aligner = trainer._extra_modules["feature_projectors"]
    assert [tuple(p.weight.shape) for p in aligner.projectors] == [(64, 32)] * 3  # student 32 -> teacher 64
    _one_backward(trainer)
    assert all(p.weight.grad is not None and p.weight.grad.abs().sum() > 0 for p in aligner.projectors)
    assert trainer.model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in trainer.teacher_model.parameters())
    assert trainer._metrics["train"]["feature_loss"][-1] > 0


def test_feature_term_adds_weighted_alignment_to_the_kd_loss(tmp_path, tokenizer):
    """Same student, teacher and batch: the total grows by exactly weight * logged feature loss (per loss token)."""
    batch = None
    losses, logged = {}, {}
    for weight in (1.0, 3.0):
        trainer = _trainer(tmp_path, tokenizer, feature_weight=weight, feature_projector="linear", seed=0)
        batch = batch or next(iter(trainer.get_train_dataloader()))
        torch.manual_seed(0)
        trainer._extra_modules["feature_projectors"].projectors.apply(lambda m: hasattr(m, "reset_parameters")
                                                                      and m.reset_parameters())
        trainer.model.eval()
        with torch.no_grad():
            losses[weight] = trainer.compute_loss(trainer.model, batch).item()
        logged[weight] = trainer._metrics["eval"]["feature_loss"][-1]
    assert logged[1.0] == pytest.approx(logged[3.0], rel=1e-5) and logged[1.0] > 0
    assert losses[3.0] - losses[1.0] == pytest.approx(2.0 * logged[1.0], rel=1e-4)


def test_defaults_collect_no_hidden_states(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, feature_weight=0.0)
    assert trainer._aligned is None and trainer._extra_modules == {}
    assert len(trainer.create_optimizer().param_groups) == 2  # the Trainer's own groups only


def test_projectors_are_optimised_with_the_student(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer)
    optimizer = trainer.create_optimizer()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in trainer._extra_modules["feature_projectors"].parameters())
    assert len(trainer.create_optimizer().param_groups) == 3  # a second call adds nothing twice


def _projector_state(trainer):
    return {k: v.clone() for k, v in trainer._extra_modules["feature_projectors"].state_dict().items()}


def test_projector_init_depends_only_on_the_seed(tmp_path, tokenizer):
    """Same init on every DDP rank and whatever ran before; the global random stream is left untouched."""
    states = {}
    for noise, seed in ((0, 0), (1, 0), (0, 5)):
        student, teacher = make_llama(len(tokenizer), 32, 2, seed=1), make_llama(len(tokenizer), 64, 4, seed=2)
        torch.manual_seed(noise)
        trainer = _trainer(tmp_path, tokenizer, student, teacher, seed=seed)
        states[noise, seed] = _projector_state(trainer)
    same = lambda a, b: all(torch.equal(states[a][k], states[b][k]) for k in states[a])  # noqa: E731
    assert same((0, 0), (1, 0)) and not same((0, 0), (0, 5))


def test_resume_restores_projectors_exactly(tmp_path, tokenizer):
    config = dict(max_steps=4, save_strategy="steps", save_steps=2, learning_rate=1e-2)
    full = _trainer(tmp_path, tokenizer, **config)
    full.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / "feature_projectors.safetensors").is_file()

    resumed = _trainer(tmp_path, tokenizer, **config)
    with safe_open(str(checkpoint / "feature_projectors.safetensors"), "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
    resumed.train(resume_from_checkpoint=str(checkpoint))
    final, expected = _projector_state(resumed), _projector_state(full)
    assert set(saved) == set(final)
    assert all(torch.allclose(final[k], expected[k], atol=1e-6) for k in final)  # continued exactly where it left off
    assert not all(torch.equal(final[k], saved[k]) for k in final)  # and did train after the restore


def test_resume_from_a_checkpoint_without_projectors_fails_clearly(tmp_path, tokenizer):
    plain = _trainer(tmp_path, tokenizer, feature_weight=0.0, save_strategy="steps", save_steps=2)
    plain.train()
    with pytest.raises(FileNotFoundError, match="feature_projectors.safetensors is missing"):
        _trainer(tmp_path, tokenizer, max_steps=4).train(resume_from_checkpoint=True)


def test_published_student_has_no_projector_weights(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer)
    trainer.train()
    trainer.save_model(str(tmp_path / "student"))
    with safe_open(str(tmp_path / "student" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert keys == set(make_llama(len(tokenizer), hidden=32, layers=2).state_dict())
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "student", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert "feature" not in json.dumps(model.config.to_dict())


# --- attention maps ------------------------------------------------------------------------------------------------
def test_attention_transfer_trains_with_eager_models(tmp_path, tokenizer):
    student = make_llama(len(tokenizer), hidden=32, layers=2, seed=1, attn_implementation="eager")
    teacher = make_llama(len(tokenizer), hidden=64, layers=4, seed=2, attn_implementation="eager")
    trainer = _trainer(tmp_path, tokenizer, student, teacher, feature_weight=0.0, attention_weight=1.0)
    _one_backward(trainer)
    assert trainer._metrics["train"]["attention_loss"][-1] > 0
    assert "feature_loss" not in trainer._metrics["train"] and trainer._extra_modules == {}  # maps only: no projectors
    assert trainer.model.model.layers[1].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in trainer.teacher_model.parameters())


def test_attention_transfer_errors_clearly_when_maps_are_unavailable(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        _trainer(tmp_path, tokenizer, attention_weight=1.0)  # sdpa models
    student = make_llama(len(tokenizer), hidden=32, layers=2, attn_implementation="eager")
    config = student.config.to_dict() | {"num_attention_heads": 2, "num_key_value_heads": 2, "num_hidden_layers": 4}
    teacher = AutoModelForCausalLM.from_config(LlamaConfig(**config), attn_implementation="eager")
    with pytest.raises(ValueError, match="4 heads and the teacher 2"):
        _trainer(tmp_path, tokenizer, student, teacher, attention_weight=1.0)


# --- configuration -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(feature_weight=-1.0), "feature_weight must be >= 0"),
        (dict(feature_loss="l1"), "Unknown feature loss"),
        (dict(feature_layers="0-0"), "teacher:student"),
        (dict(feature_layers="0:0,1:1", feature_pair_weights="1"), "one weight per pair"),
        (dict(feature_projector="mlp"), "feature_projector"),
        (dict(feature_weight=1.0, teacher_cache="/nonexistent"), "need a live teacher"),
    ],
)
def test_config_rejects_bad_feature_settings(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(tmp_path, **overrides)


def test_uniform_map_pair_weights_are_counted_against_the_models(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="2 layer pair"):
        _trainer(tmp_path, tokenizer, feature_pair_weights="1,1,1")


def test_a_teacher_cache_passed_to_the_trainer_is_refused(tmp_path, tokenizer):
    from hf_distill.cache.writer import collect_teacher_cache

    teacher = make_llama(len(tokenizer), hidden=64, layers=2, seed=2)
    data = prompt_completion(slice(0, 8))
    collect_teacher_cache(teacher, data, tmp_path / "cache", tokenizer, args=tiny_config(tmp_path), log=lambda _: None,
                          top_k=4, batch_size=4)
    with pytest.raises(ValueError, match="need a live teacher"):
        DistillationTrainer(make_llama(len(tokenizer), hidden=32, layers=1), tiny_config(tmp_path, feature_weight=1.0),
                            train_dataset=data, processing_class=tokenizer, teacher_cache=str(tmp_path / "cache"))
