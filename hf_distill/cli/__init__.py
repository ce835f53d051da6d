"""The `hf-distill` command line (also `python -m hf_distill`): one module per subcommand, one dialect — TRL's
snake_case argument names through `HfArgumentParser`, and `--config FILE.yaml` everywhere."""

from hf_distill.cli.main import main

__all__ = ["main"]
