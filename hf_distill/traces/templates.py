"""Teacher scaffolding: the prompts that ask a teacher to reason step by step and end with a parseable answer.

A template is a system message (optional) and a user message with a ``{question}`` slot. It is rendered through the
teacher tokenizer's chat template or, for a base model without one, in the plain format training and evaluation use
(:data:`~hf_distill.data.reasoning.PLAIN_PROMPT`), so a teacher trained here on plain text sees its own format (a
custom template's text is used as written). Pick the template the teacher follows: a small model fine-tuned on bare
questions (the embedded demo's teacher) only answers in the format it was trained on, so ``"default"`` is the bare
question; an instruct model needs the instructions of ``"step_by_step"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from hf_distill.data.reasoning import has_chat_template
from hf_distill.evaluation.generate import leading_special_text, prompt_text

_FINAL_LINE = "Finish with a final line of the form '#### <number>' that holds only the final answer."


@dataclass(frozen=True)
class PromptTemplate:
    """``user`` must contain ``{question}``; ``system`` is an optional system message. ``plain_format``: without a
    chat template, frame the text in the plain training format (built-in templates); False: use it as written (a
    custom template's text is the whole prompt)."""

    name: str
    user: str
    system: str | None = None
    plain_format: bool = True

    def __post_init__(self):
        if "{question}" not in self.user:
            raise ValueError(f"prompt template {self.name!r} must contain '{{question}}' where the question goes")

    def messages(self, question: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": self.user.replace("{question}", question)}]

    def render(self, tokenizer: PreTrainedTokenizerBase, question: str) -> str:
        """The exact text the teacher continues: its chat template with the generation prompt or, without one, the
        plain format training and evaluation use (system text, a blank line, ``"Question: {user}\nAnswer:"``) or
        the text as written; both after the special tokens the tokenizer starts a text with (Gemma's ``<bos>``)."""
        if self.plain_format or has_chat_template(tokenizer):
            return prompt_text(tokenizer, self.messages(question))
        return leading_special_text(tokenizer) + "\n\n".join(m["content"] for m in self.messages(question)) + "\n"


TEMPLATES = {
    template.name: template
    for template in (
        PromptTemplate("default", "{question}"),
        PromptTemplate(
            "step_by_step",
            "{question}\n\nSolve the problem step by step. Write every calculation as an equation such as "
            "'12 + 15 = 27', one step per line. " + _FINAL_LINE,
            system="You are a careful math tutor who shows every step of a calculation.",
        ),
        PromptTemplate("think", "{question}\n\nLet's think step by step. " + _FINAL_LINE),
    )
}
"""Built-in templates by name. ``default``: the bare question (what the demo teacher was trained on);
``step_by_step``: explicit instructions and a system message for instruct models; ``think``: zero-shot CoT."""


def get_template(name_or_text: str) -> PromptTemplate:
    """A built-in template by name, or a custom one from text holding ``{question}`` (user message, no system)."""
    if name_or_text in TEMPLATES:
        return TEMPLATES[name_or_text]
    if "{question}" in name_or_text:
        return PromptTemplate("custom", name_or_text, plain_format=False)
    raise ValueError(
        f"unknown prompt template {name_or_text!r}: use one of {sorted(TEMPLATES)} or a text containing "
        "'{question}' where the question goes"
    )
