"""hf_distill.cross_tokenizer.alignment / vocabulary / collator: one text tokenized by a SentencePiece-style and a
ByteLevel tokenizer, grouped by character spans; the shared vocabulary; the batches the collator builds."""

from __future__ import annotations

import pytest
import torch
from helpers import CORPUS

from hf_distill.cross_tokenizer.alignment import (
    PairTokenizer,
    aligned_positions,
    decode_with_spans,
    span_groups,
)
from hf_distill.cross_tokenizer.collator import (
    ALIGNED_POSITIONS,
    TEACHER_IDS,
    TEACHER_MASK,
    CrossTokenizerCollator,
)
from hf_distill.cross_tokenizer.vocabulary import shared_token_pairs, token_surfaces

SENTENCE = "Natalia sold 48 clips. 72 unbelievable café!"


def test_span_groups_join_tokens_until_both_sides_end_at_the_same_character():
    # student: "ab" "c" | "de" ; teacher: <bos> "a" "bc" | "d" "e"; a 2-token UTF-8 character (same span twice)
    student = [(0, 2), (2, 3), (3, 5), (5, 6), (5, 6)]
    teacher = [(0, 0), (0, 1), (1, 3), (3, 4), (4, 5), (5, 6)]
    assert span_groups(student, teacher) == [([0, 1], [1, 2]), ([2], [3, 4]), ([3, 4], [5])]
    # the token before each group: student 1 / teacher 2 before "de", student 2 / teacher 4 before the character
    assert aligned_positions(student, teacher) == [(1, 2), (2, 4)]


@pytest.mark.real_model
def test_known_sentence_aligns_token_by_token_smollm2_and_gemma(smollm2_tokenizer, gemma_tokenizer):
    ids = smollm2_tokenizer(SENTENCE)["input_ids"] + [smollm2_tokenizer.eos_token_id]
    student, teacher = PairTokenizer(smollm2_tokenizer, gemma_tokenizer)(ids)
    assert teacher.ids == [gemma_tokenizer.bos_token_id, *gemma_tokenizer(SENTENCE, add_special_tokens=False)
                           ["input_ids"], gemma_tokenizer.eos_token_id]
    groups = [(smollm2_tokenizer.convert_ids_to_tokens([student.ids[i] for i in s]),
               gemma_tokenizer.convert_ids_to_tokens([teacher.ids[i] for i in t]))
              for s, t in span_groups(student.spans, teacher.spans)]
    assert groups == [
        (["N", "atal"], ["Natal"]), (["ia"], ["ia"]), (["Ġsold"], ["▁sold"]), (["Ġ"], ["▁"]), (["4"], ["4"]),
        (["8"], ["8"]), (["Ġclips"], ["▁clips"]), (["."], ["."]), (["Ġ"], ["▁"]), (["7"], ["7"]), (["2"], ["2"]),
        (["Ġunbelie", "vable"], ["▁unbelievable"]), (["ĠcafÃ©"], ["▁café"]), (["!"], ["!"]),
        (["<|im_end|>"], ["<eos>"]),
    ]
    # SmolLM2 predicts "ia" after "atal" (position 1), Gemma after "Natal" (position 1, after <bos>); no pair for the
    # first group (the student has no position before its first token) nor inside "Ġunbelie vable".
    pairs = aligned_positions(student.spans, teacher.spans)
    assert pairs[:2] == [(1, 1), (2, 2)] and len(pairs) == len(groups) - 1
    assert (13, 12) in pairs and (12, 12) not in pairs  # "ĠcafÃ©" after "vable" <-> "▁café" after "▁unbelievable"


@pytest.mark.real_model
def test_shared_vocabulary_matches_spellings_across_bytelevel_and_sentencepiece(smollm2_tokenizer, gemma_tokenizer):
    pairs = shared_token_pairs(smollm2_tokenizer, gemma_tokenizer)
    s_id, g_id = smollm2_tokenizer.convert_tokens_to_ids, gemma_tokenizer.convert_tokens_to_ids
    assert pairs[s_id("Ġthe")] == g_id("▁the") and pairs[s_id("ĠApril")] == g_id("▁April")
    assert pairs[s_id("A")] == g_id("A")  # not Gemma's byte-fallback <0x41>, which also spells "A"
    assert pairs[smollm2_tokenizer.eos_token_id] == gemma_tokenizer.eos_token_id
    assert s_id("Ã") not in pairs  # half of a UTF-8 character spells nothing
    assert 40_000 < len(pairs) < len(smollm2_tokenizer)
    for student_id, teacher_id in list(pairs.items())[::5000]:  # spot checks: the same text on both sides
        assert (smollm2_tokenizer.decode([s_id("a"), student_id])[1:]
                == gemma_tokenizer.decode([g_id("a"), teacher_id])[1:]), (student_id, teacher_id)


def test_token_surfaces_strip_the_sentencepiece_space_marker(metaspace_tokenizer, bytelevel_tokenizer):
    student, teacher = token_surfaces(bytelevel_tokenizer), token_surfaces(metaspace_tokenizer)
    assert teacher[" apples"] == metaspace_tokenizer.convert_tokens_to_ids("▁apples")
    assert student[" "] == bytelevel_tokenizer.convert_tokens_to_ids("Ġ")
    assert "<eos>" not in student and "<bos>" not in teacher  # special tokens have no spelling


@pytest.mark.parametrize("text", [*CORPUS[::37], "So  Ann has 12 apples.", "é🙂 Bob"])
def test_every_aligned_pair_has_read_the_same_text(bytelevel_tokenizer, metaspace_tokenizer, text):
    ids = bytelevel_tokenizer(text)["input_ids"] + [bytelevel_tokenizer.eos_token_id]
    student, teacher = PairTokenizer(bytelevel_tokenizer, metaspace_tokenizer)(ids)
    decode = bytelevel_tokenizer.decode
    full = decode(ids)
    for s_tokens, t_tokens in span_groups(student.spans, teacher.spans):
        assert (full[student.spans[s_tokens[0]][0]:student.spans[s_tokens[-1]][1]]
                == full[teacher.spans[t_tokens[0]][0]:teacher.spans[t_tokens[-1]][1]])
    pairs = aligned_positions(student.spans, teacher.spans)
    assert pairs
    for s, t in pairs:
        assert student.spans[s][1] == teacher.spans[t][1]  # both have read text[:end] and nothing more
    covered = sum(len(g[0]) for g in span_groups(student.spans, teacher.spans))
    assert covered == len(ids)


def test_spans_come_from_prefix_decoding_when_the_ids_do_not_re_tokenize_alike(bytelevel_tokenizer):
    pieces = ["A", "n", "n", "Ġ", "h", "a", "s"]  # not the tokenizer's own (merged) tokenization of "Ann has"
    ids = bytelevel_tokenizer.convert_tokens_to_ids(pieces)
    assert bytelevel_tokenizer("Ann has")["input_ids"] != ids
    text, spans = decode_with_spans(bytelevel_tokenizer, ids)
    assert text == "Ann has" and spans == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7)]


def test_collator_adds_the_teachers_ids_and_positions_in_batch_coordinates(bytelevel_tokenizer, metaspace_tokenizer):
    texts = [CORPUS[0], CORPUS[5] + " " + CORPUS[6]]
    rows = [bytelevel_tokenizer(t)["input_ids"] + [bytelevel_tokenizer.eos_token_id] for t in texts]
    width = max(map(len, rows))

    def left_padding(examples):  # a collator that pads on the left
        pad = [[0] * (width - len(e["input_ids"])) for e in examples]
        return {"input_ids": torch.tensor([p + e["input_ids"] for p, e in zip(pad, examples)]),
                "attention_mask": torch.tensor([[0] * len(p) + [1] * len(e["input_ids"]) for p, e in
                                                zip(pad, examples)])}

    collator = CrossTokenizerCollator(left_padding, PairTokenizer(bytelevel_tokenizer, metaspace_tokenizer))
    batch = collator([{"input_ids": r} for r in rows])
    for b, text in enumerate(texts):
        want = metaspace_tokenizer(text)["input_ids"] + [metaspace_tokenizer.eos_token_id]
        length = int(batch[TEACHER_MASK][b].sum())
        assert batch[TEACHER_IDS][b, :length].tolist() == want
        assert (batch[TEACHER_IDS][b, length:] == metaspace_tokenizer.pad_token_id).all()
        pairs = [p for p in batch[ALIGNED_POSITIONS][b].tolist() if p[0] >= 0]
        offset = width - len(rows[b])
        # a student position's token and the teacher position's token end at the same text: same next token
        for s, t in pairs:
            student_text = bytelevel_tokenizer.decode(batch["input_ids"][b, offset:s + 1])
            teacher_text = metaspace_tokenizer.decode(batch[TEACHER_IDS][b, 1:t + 1])
            assert student_text == teacher_text, (s, t)
    with pytest.raises(ValueError, match="attention_mask"):
        CrossTokenizerCollator(lambda e: {"input_ids": torch.tensor([rows[0]])}, collator.pair)([{}])


CONVERSATION = [{"role": "user", "content": "Ann has 5 apples and buys 3 more."},
                {"role": "assistant", "content": "so Ann has 8 apples."},
                {"role": "user", "content": "Bob has 2 apples."},
                {"role": "assistant", "content": "Bob has 2 apples."}]


def test_a_conversation_reaches_the_teacher_in_its_own_chat_template(chat_pair):
    student_tokenizer, teacher_tokenizer = chat_pair
    ids = student_tokenizer.apply_chat_template(CONVERSATION, tokenize=True)["input_ids"]
    student, teacher = PairTokenizer(student_tokenizer, teacher_tokenizer)(ids)
    teacher_pieces = teacher_tokenizer.convert_ids_to_tokens(teacher.ids)
    assert teacher_pieces[:3] == ["<bos>", "<start_of_turn>", "u"]  # Gemma's template, not ChatML's markers
    assert teacher_pieces.count("<start_of_turn>") == 4 and teacher_pieces.count("<end_of_turn>") == 4
    assert "<|im_start|>" not in teacher_tokenizer.decode(teacher.ids)
    groups = [(student_tokenizer.decode([student.ids[i] for i in s]), teacher_tokenizer.decode([teacher.ids[i] for i in t]))
              for s, t in span_groups(student.spans, teacher.spans)]
    contents = [g for g in groups if "<" not in g[0]]
    assert all(s == t for s, t in contents)  # message text: the same on both sides, group by group
    assert "".join(s for s, _ in contents) == "".join(m["content"] for m in CONVERSATION)
    scaffolds = [g for g in groups if "<" in g[0]]  # one group per scaffold: opening, 3 between turns, closing
    student_scaffold, teacher_scaffold = scaffolds[1]  # (the tiny teacher spells "\n" as <unk>)
    assert student_scaffold == "<|im_end|>\n<|im_start|>assistant\n"
    assert teacher_scaffold.replace("<unk>", "\n") == "<end_of_turn>\n<start_of_turn>model\n"
    assert len(scaffolds) == 5
    # before each end of turn, the student predicts <|im_end|> where the teacher predicts <end_of_turn>
    ends = [(s, t) for s, t in aligned_positions(student.spans, teacher.spans)
            if student_tokenizer.convert_ids_to_tokens(student.ids[s + 1]) == "<|im_end|>"]
    assert len(ends) == 4
    assert all(teacher_pieces[t + 1] == "<end_of_turn>" for _, t in ends)


def test_text_that_is_not_a_conversation_stays_plain_text_for_the_teacher(chat_pair):
    student_tokenizer, teacher_tokenizer = chat_pair
    ids = student_tokenizer(CORPUS[0])["input_ids"]
    _, teacher = PairTokenizer(student_tokenizer, teacher_tokenizer)(ids)
    assert teacher.ids == teacher_tokenizer(CORPUS[0])["input_ids"]
