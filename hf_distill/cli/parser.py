"""How every `hf-distill` subcommand reads its arguments: `HfArgumentParser` dataclasses with TRL's snake_case names,
and `--config FILE.yaml` with the semantics of TRL's `TrlParser` (`trl sft --config x.yaml`): the file's values
(same names as the flags) become the defaults, flags on the command line override them, unknown keys are refused,
and an ``env:`` mapping sets environment variables.

    hf-distill train --config run.yaml --max_steps 10    # run.yaml as it is, but 10 steps

The spellings of the release before (``--dataset``, ``--out``, ``--teacher``, kebab-case ``--top-k``...) still work
for one release: `modernise` renames them before parsing, with a DeprecationWarning and a line on stderr (where a
DeprecationWarning alone would stay hidden) naming the new spelling.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings

from trl import TrlParser

# old name -> new name, for names that changed beyond kebab-case -> snake_case (which every flag gets)
RENAMED = {
    "dataset": "dataset_name",  # train, cache-logits, traces (TRL's ScriptArguments)
    "out": "output_dir",  # demo, cache-logits
    "teacher": "teacher_model_name_or_path",  # cache-logits, traces
    "split": "dataset_train_split",  # traces
    "max_problems": "num_examples",  # traces: the first N problems
    "device": "teacher_device",  # cache-logits (DistillationConfig's field)
}


def modern_name(name: str, known: set[str], spelled=lambda n: f"--{n}", command: str = "hf-distill") -> str:
    """``name`` as this parser spells it now (``known``: its snake_case names), warning when it is an old spelling.
    A name the parser does not know either way is left alone, for argparse to report."""
    if name in known:
        return name
    snake = name.replace("-", "_")
    new = snake if snake in known else RENAMED.get(snake)
    if new is None or new not in known:
        return name
    message = (f"{command}: {spelled(name)} is deprecated, use {spelled(new)} (the old spelling goes in the next "
               "release).")
    warnings.warn(message, DeprecationWarning, stacklevel=3)
    print(f"warning: {message}", file=sys.stderr)
    return new


class Parser(TrlParser):
    """`TrlParser` (`--config FILE.yaml`, flags override it) that also reads last release's spellings (see
    `modernise`) and, optionally, one positional argument filling a dataclass field (``hf-distill cascade RECIPE``)."""

    def __init__(self, dataclass_types, positional: str | None = None, **kwargs):
        super().__init__(dataclass_types, **kwargs)
        for action in self._actions:  # argparse %-formats help: a lone % (`{% generation %}`) would break -h
            if action.help:
                action.help = re.sub(r"(?<!%)%(?![%(])", "%%", action.help)
        self.positional = positional
        if positional is not None:  # also `--<positional> X` and `<positional>:` in a config file
            self.add_argument(positional, nargs="?", default=argparse.SUPPRESS, metavar=positional.upper(),
                              help=f"same as --{positional}")
        self.add_argument("--config", metavar="FILE.yaml", default=argparse.SUPPRESS,
                          help="a YAML file of these arguments (same names); flags given here override its values")

    @property
    def known(self) -> set[str]:
        """The parser's snake_case long-option names (without the kebab-case aliases `HfArgumentParser` adds)."""
        return {option[2:] for action in self._actions for option in action.option_strings
                if option.startswith("--") and "-" not in option[2:]}

    def modernise(self, argv: list[str]) -> list[str]:
        """``argv`` with old spellings renamed (``--top-k=4`` -> ``--top_k=4``, ``--out`` -> ``--output_dir``)."""
        known, modern = self.known, []
        for index, token in enumerate(argv):
            if token == "--":
                return modern + argv[index:]
            if token.startswith("--") and len(token) > 2:
                name, equals, value = token[2:].partition("=")
                name = modern_name(name, known, command=self.prog)
                if name == "config" and equals:  # TrlParser looks for `--config PATH` as two words
                    modern += ["--config", value]
                    continue
                token = f"--{name}{equals}{value}"
            modern.append(token)
        return modern

    def set_defaults_with_config(self, **config) -> list[str]:
        known = self.known
        config = {modern_name(key, known, spelled=lambda n: f"`{n}:`", command=f"{self.prog} --config"): value
                  for key, value in config.items()}
        remaining = super().set_defaults_with_config(**config)
        for action in self._actions:  # the positional stays optional: the config's value comes through --<name>
            if not action.option_strings and action.dest == self.positional:
                action.default = argparse.SUPPRESS
        return remaining

    def parse(self, argv: list[str] | None = None) -> tuple:
        """The dataclasses, from ``argv`` (default: ``sys.argv[1:]``) and the ``--config`` file it names."""
        return self.parse_args_and_config(self.modernise(list(sys.argv[1:] if argv is None else argv)))
