"""What the student writes, every ``logging_steps``: a few (prompt, completion) pairs of the latest generated
micro-batch, printed as a small table and kept in ``output_dir/completions.jsonl`` (like TRL's completions table)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import TrainerCallback

from hf_distill.utils.io import write_text_atomic

logger = logging.getLogger("hf_distill.on_policy")
KEEP_ROWS = 1000  # the file keeps the latest rows, so a long run does not grow it without bound


class CompletionsLog(TrainerCallback):
    def __init__(self, mixer, tokenizer):
        self.mixer, self.tokenizer = mixer, tokenizer
        self.rows: list[dict] = []
        self._logged_step = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        sample = self.mixer.latest
        if not state.is_world_process_zero or sample is None or sample.step == self._logged_step:
            return
        self._logged_step = sample.step
        new = []
        for ids, labels in zip(sample.input_ids, sample.labels):
            completion = labels != -100
            start = int(completion.int().argmax()) if completion.any() else len(ids)
            new.append({"step": state.global_step, "source": sample.source,
                        "prompt": self.tokenizer.decode(ids[:start], skip_special_tokens=True),
                        "completion": self.tokenizer.decode(ids[completion], skip_special_tokens=False)})
        self.rows = (self.rows + new)[-KEEP_ROWS:]
        write_text_atomic(Path(args.output_dir) / "completions.jsonl",
                          "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in self.rows))
        table = "\n".join(f"  {row['prompt'][-60:]!r} -> {row['completion'][:120]!r}" for row in new)
        logger.info("step %d, %s completions (prompt tail -> completion):\n%s", state.global_step, sample.source, table)
