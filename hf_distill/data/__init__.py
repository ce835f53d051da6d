"""Reasoning data: a synthetic GSM8K-format task, one loader for any GSM8K-format source, a tokenizer."""

from hf_distill.data.arithmetic import make_arithmetic_dataset
from hf_distill.data.reasoning import load_reasoning_dataset, to_prompt_completion
from hf_distill.data.tokenizer import train_tokenizer

__all__ = ["load_reasoning_dataset", "make_arithmetic_dataset", "to_prompt_completion", "train_tokenizer"]
