"""`RequestJournal`: finished requests of the shard in progress, one JSON line each, so a killed run re-asks none.

A shard of served work takes many requests and minutes; the shard file is only written when all are back. Each
answer is appended (and flushed) as soon as it arrives; a rerun reads the journal, skips the requests recorded there
and asks only the rest. The shard's file, once written and recorded in the manifest, supersedes the journal, which is
then deleted. A line torn by a kill is ignored (that one request is asked again).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path


class RequestJournal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.done: dict[str, object] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # the last line, cut by a kill
                    continue
                self.done[str(entry["id"])] = entry["result"]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = None

    def record(self, key, result) -> None:
        """Append one finished request (thread-safe; flushed at once so a killed process keeps it)."""
        line = json.dumps({"id": str(key), "result": result}) + "\n"
        with self._lock:
            if self._file is None:
                torn = self.path.is_file() and not self.path.read_bytes().endswith(b"\n") and self.path.stat().st_size
                self._file = open(self.path, "a")
                if torn:  # end the torn line, so that it does not swallow this one
                    self._file.write("\n")
            self._file.write(line)
            self._file.flush()
            self.done[str(key)] = result

    def close(self, delete: bool = False) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            if delete:
                self.path.unlink(missing_ok=True)
