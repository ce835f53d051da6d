"""A served teacher writing reasoning traces (``hf-distill traces --teacher_url``): prompts out, samples back.

:func:`hf_distill.traces.collect_traces` keeps the shards, manifest, verification and resume; this class turns one
shard of problems into requests, ``teacher_concurrency`` in flight, journals every answer as it arrives
(:class:`~hf_distill.served.journal.RequestJournal`), and counts tokens and requests.

Problem ``p`` is asked with seed ``config.seed + p * num_samples`` (its i-th sample, when asked alone, with that
seed + i): a resumed run asks what the uninterrupted one would have, and engines that honour seeds answer the same.
"""

from __future__ import annotations

from hf_distill.data.reasoning import has_chat_template, plain_prompt
from hf_distill.served.journal import RequestJournal
from hf_distill.served.sampling import sample, served_model_name


class ServedTraceTeacher:
    def __init__(self, config, tokenizer=None):
        self.config, self.tokenizer = config, tokenizer
        self.client = config.served_client()
        self.model = served_model_name(self.client, config.teacher_served_model)
        self.endpoint = config.teacher_endpoint
        self.conversational = self.endpoint == "chat"

    def manifest_fields(self) -> dict:
        """What identifies the teacher in the manifest (a resumed run must name the same served model)."""
        return {"name": self.model, "config_sha256": None, "served": {"endpoint": self.endpoint}}

    def prompt(self, template, question: str):
        """Chat messages for the chat endpoint; for completions, the text a local model would be given (its
        tokenizer's plain rendering when one is passed, else the plain format)."""
        if self.endpoint == "chat":
            return template.messages(question)
        if self.tokenizer is not None and not has_chat_template(self.tokenizer):
            return template.render(self.tokenizer, question)
        messages = template.messages(question)
        if not template.plain_format:  # a custom template's text, as written
            return "\n\n".join(m["content"] for m in messages) + "\n"
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or None
        return plain_prompt(messages[-1]["content"], system)

    def sample_shard(self, dataset, rows: range, template, journal: RequestJournal) -> tuple[list[str], dict]:
        """``num_samples`` texts per problem of ``rows`` (problem-major) and the usage of the requests sent now."""
        config = self.config
        questions = dataset.select(rows)["question"]
        before = self.client.usage.as_dict()
        todo = [(problem, question) for problem, question in zip(rows, questions) if str(problem) not in journal.done]

        def ask(item) -> None:
            problem, question = item
            texts = sample(self.client, self.endpoint, self.model, self.prompt(template, question),
                           n=config.num_samples, temperature=config.temperature, top_p=config.top_p,
                           max_tokens=config.max_new_tokens, seed=config.seed + problem * config.num_samples)
            journal.record(problem, texts)

        self.client.map(ask, todo)
        texts = [text for problem in rows for text in journal.done[str(problem)]]
        return texts, {**self.client.usage.since(before), "asked": len(todo)}


def total_usage(shards: list[dict]) -> dict:
    """The usage of every shard of a manifest, summed (shards collected in-process have none)."""
    keys = ("requests", "retries", "prompt_tokens", "completion_tokens", "seconds")
    total = {key: sum(entry.get("usage", {}).get(key, 0) for entry in shards) for key in keys}
    total["seconds"] = round(total["seconds"], 3)
    seconds = total["seconds"]
    total["requests_per_s"] = round(total["requests"] / seconds, 3) if seconds else None
    total["completion_tokens_per_s"] = round(total["completion_tokens"] / seconds, 1) if seconds else None
    return total


def usage_line(usage: dict) -> str:
    return (f"{usage['requests']} requests ({usage['retries']} retried) in {usage['seconds']:.1f} s = "
            f"{usage['requests_per_s'] or 0:.2f} requests/s; {usage['prompt_tokens']} prompt + "
            f"{usage['completion_tokens']} completion tokens ({usage['completion_tokens_per_s'] or 0:.1f} tokens/s)")
