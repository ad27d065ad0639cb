"""Sections under one time budget: each runs guarded (a failure is recorded and the next one runs),
is skipped when its estimate would overrun the budget, and leaves its figures in the JSON file at
once, so a lease that ends early still leaves everything measured so far. A watchdog prints the
table and exits if a section hangs past the budget.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Figures = dict[str, Any]
Rows = list[tuple[str, str]]  # (what, value) lines for the table
SectionFn = Callable[[], tuple[Figures, Rows]]

GRACE_S = 30  # past the budget, the watchdog gives a hung section this long before it stops the run


@dataclass
class Section:
    name: str
    estimate_s: float  # expected seconds on the GPU host: skipped when it would overrun the budget
    run: SectionFn


@dataclass
class Harness:
    out: Path
    budget_s: float
    check_estimates: bool = True  # off for the tiny CPU run, whose times have nothing to do with the estimates
    started: float = field(default_factory=time.monotonic)
    results: dict[str, Figures] = field(default_factory=dict)
    rows: dict[str, Rows] = field(default_factory=dict)
    meta: Figures = field(default_factory=dict)
    _running: str | None = None
    _planned: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{self.elapsed():5.0f}s] {message}", flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def run_all(self, sections: list[Section]) -> None:
        self._planned = [s.name for s in sections]
        watchdog = threading.Timer(max(self.budget_s + GRACE_S - self.elapsed(), 1), self._time_up)
        watchdog.daemon = True
        watchdog.start()
        try:
            for section in sections:
                self._run_one(section)
        finally:
            watchdog.cancel()
        self.finish()

    def _run_one(self, section: Section) -> None:
        left = self.budget_s - self.elapsed()
        if self.check_estimates and section.estimate_s > left:
            self._record(section.name, {"status": "skipped", "error": f"time budget: {left:.0f} s left, "
                                        f"needs ~{section.estimate_s:.0f} s"}, [])
            self.log(f"{section.name}: skipped ({left:.0f} s left of the budget, needs ~{section.estimate_s:.0f} s)")
            return
        self.log(f"{section.name}: start")
        with self._lock:
            self._running = section.name
        began = time.monotonic()
        try:
            figures, rows = section.run()
            result = {**figures, "status": "ok"}  # a figure named status cannot hide the outcome
        except Exception as exc:  # one broken part must not lose the rest of the lease
            traceback.print_exc()
            result, rows = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:500]}, []
        result["seconds"] = round(time.monotonic() - began, 1)
        with self._lock:
            self._running = None
        self._record(section.name, result, rows)
        self.log(f"{section.name}: {result['status']} in {result['seconds']} s")

    def _record(self, name: str, result: Figures, rows: Rows) -> None:
        with self._lock:
            self.results[name], self.rows[name] = result, rows
        self.write()

    def write(self) -> None:
        with self._lock:
            doc = {**self.meta, "elapsed_s": round(self.elapsed(), 1), "sections": self.results}
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(self.out)  # a reader (or a killed run) sees the old file or the new, never half

    def table(self) -> str:
        lines = [f"{'section':18s} {'what':44s} value", "-" * 100]
        with self._lock:
            for name, result in self.results.items():
                if result["status"] != "ok":
                    lines.append(f"{name:18s} {result['status'].upper()}: {result.get('error', '')}"[:400])
                    continue
                for i, (what, value) in enumerate(self.rows[name] or [("done", f"{result['seconds']} s")]):
                    lines.append(f"{name if i == 0 else '':18s} {what:44s} {value}")
        return "\n".join(lines)

    def finish(self) -> None:
        self.write()
        print(f"\nfigures: {self.out}  (elapsed {self.elapsed():.0f} s of a {self.budget_s:.0f} s budget)\n"
              + self.table(), flush=True)

    def _time_up(self) -> None:
        """A section hung past the budget: record it, print the table, end the run and its children."""
        with self._lock:
            name = self._running
        if name is not None:
            self._record(name, {"status": "failed", "error": f"still running at the time limit "
                                f"({self.budget_s + GRACE_S:.0f} s)"}, [])
        for later in self._planned:
            if later not in self.results:
                self._record(later, {"status": "skipped", "error": f"the run was stopped in {name}"}, [])
        self.finish()
        import psutil  # the host has it (accelerate needs it)

        for child in psutil.Process().children(recursive=True):
            child.kill()
        os._exit(3)
