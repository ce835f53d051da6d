"""Which teacher layer each student layer is aligned with.

Layers are numbered as in a Hugging Face model's ``output_hidden_states``: 0 is the embedding output, ``i`` the
output of decoder layer ``i``, and ``num_hidden_layers`` the final (normed) hidden state. A map is a list of
``(teacher_layer, student_layer)`` pairs, written ``"t:s,t:s"`` in a config, e.g. ``"0:0,2:1,4:2"`` for a 4-layer
teacher and a 2-layer student.

``"uniform"`` pairs every student layer ``j = 1..L_s`` with teacher layer ``round(j * L_t / L_s)``: the student's
last layer meets the teacher's last, and the others are spread evenly in between (TinyBERT's uniform strategy).
"""

from __future__ import annotations

from collections.abc import Sequence

LayerPair = tuple[int, int]  # (teacher_layer, student_layer)


def parse_layer_pairs(spec: str | Sequence[Sequence[int]]) -> list[LayerPair] | None:
    """``"uniform"`` -> None (resolved once depths are known); ``"0:0,2:1"`` or ``[(0, 0), (2, 1)]`` -> pairs."""
    if isinstance(spec, str):
        if spec.strip() == "uniform":
            return None
        try:
            pairs = [tuple(int(i) for i in item.split(":")) for item in spec.split(",") if item.strip()]
        except ValueError:
            pairs = []
    else:
        pairs = [tuple(int(i) for i in pair) for pair in spec]
    if not pairs or any(len(pair) != 2 or min(pair) < 0 for pair in pairs):
        raise ValueError(
            f"feature_layers must be 'uniform' or a list of teacher:student layer pairs such as '0:0,2:1,4:2' "
            f"(non-negative integers, 0 = embeddings), got {spec!r}."
        )
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"feature_layers lists a pair twice: {spec!r}.")
    return pairs


def uniform_layer_pairs(teacher_layers: int, student_layers: int) -> list[LayerPair]:
    """Student layer ``j`` (1-based) <- teacher layer ``round(j * L_t / L_s)``."""
    return [(round(j * teacher_layers / student_layers), j) for j in range(1, student_layers + 1)]


def resolve_layer_pairs(
    spec: str | Sequence[Sequence[int]], teacher_layers: int, student_layers: int
) -> list[LayerPair]:
    """The pairs for models of these depths, checked against them."""
    pairs = parse_layer_pairs(spec)
    if pairs is None:
        return uniform_layer_pairs(teacher_layers, student_layers)
    for teacher_layer, student_layer in pairs:
        if teacher_layer > teacher_layers or student_layer > student_layers:
            raise ValueError(
                f"feature_layers pair {teacher_layer}:{student_layer} is out of range: the teacher has hidden states "
                f"0..{teacher_layers} and the student 0..{student_layers} (0 = embeddings). Fix the pair or use "
                "'uniform'."
            )
    return pairs


def parse_pair_weights(weights: str | Sequence[float] | None, num_pairs: int) -> list[float]:
    """One weight per pair (default 1.0 each), from ``"1,0.5"`` or a list."""
    if weights is None:
        return [1.0] * num_pairs
    if isinstance(weights, str):
        try:
            weights = [float(w) for w in weights.split(",") if w.strip()]
        except ValueError:
            raise ValueError(f"feature_pair_weights must be comma-separated numbers, got {weights!r}.") from None
    weights = [float(w) for w in weights]
    if len(weights) != num_pairs:
        raise ValueError(
            f"feature_pair_weights has {len(weights)} value(s) but there are {num_pairs} layer pair(s); give one "
            "weight per pair in the order of feature_layers."
        )
    if any(w < 0 for w in weights):
        raise ValueError(f"feature_pair_weights must be >= 0, got {weights}.")
    return weights
