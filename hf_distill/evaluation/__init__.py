"""Evaluation of reasoning students: answer extraction (answers), generation-based accuracy and agreement
(generate), and Logic-Match, the alignment of a student's equations with its teacher's (logic_match)."""

from hf_distill.evaluation.generate import (
    answer_agreement,
    chat_prompts,
    evaluate_reasoning,
    generate,
)

__all__ = ["answer_agreement", "chat_prompts", "evaluate_reasoning", "generate"]
