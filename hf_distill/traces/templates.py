"""Teacher scaffolding: the prompts that ask a teacher to reason step by step and end with a parseable answer.

A template is a system message (optional) and a user message with a ``{question}`` slot. It is rendered through the
teacher tokenizer's chat template, or as plain text for a base model without one. Pick the template the teacher
follows: a small model fine-tuned on bare questions (the embedded demo's teacher) only answers in the format it was
trained on, so ``"default"`` is the bare question; an instruct model needs the instructions of ``"step_by_step"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

_FINAL_LINE = "Finish with a final line of the form '#### <number>' that holds only the final answer."


@dataclass(frozen=True)
class PromptTemplate:
    """``user`` must contain ``{question}``; ``system`` is an optional system message."""

    name: str
    user: str
    system: str | None = None

    def __post_init__(self):
        if "{question}" not in self.user:
            raise ValueError(f"prompt template {self.name!r} must contain '{{question}}' where the question goes")

    def messages(self, question: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": self.user.replace("{question}", question)}]

    def render(self, tokenizer: PreTrainedTokenizerBase, question: str) -> str:
        """The exact text the teacher continues: its chat template with the generation prompt, or plain text."""
        if tokenizer.chat_template:
            return tokenizer.apply_chat_template(self.messages(question), tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in self.messages(question)) + "\n"


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
        return PromptTemplate("custom", name_or_text)
    raise ValueError(
        f"unknown prompt template {name_or_text!r}: use one of {sorted(TEMPLATES)} or a text containing "
        "'{question}' where the question goes"
    )
