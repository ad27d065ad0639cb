"""The terminal review screen: one record at a time, single keys, each verdict saved at once.

    [a] accept  [r] reject (pick a reason)  [f] fix inline  [e] fix in $EDITOR
    [s] skip  [b] back  [q] quit  [?] help        (left/right arrows: back/skip)

The source chunk is shown with the parts the answer draws on highlighted; a chunk longer than
the screen is shown around its most-quoted part.
"""

from __future__ import annotations

import os
import sys
import termios
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self, TextIO

import click
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.text import Text

from distillery.records import SEPARATOR, Review

from .lot import Context
from .review import REASONS, ReviewError, ReviewSession, validate_fix
from .text import shared_spans

KEYS = "[a] accept  [r] reject  [f] fix  [e] fix in $EDITOR  [s] skip  [b] back  [q] quit  [?] help"
_ARROWS = {"\x1b[D": "b", "\x1b[C": "s", "\x1bOD": "b", "\x1bOC": "s"}
_REASON_KEYS = {str(i): key for i, key in enumerate(REASONS, 1)}
_EDIT_HELP = ("# Fix the answer, save and close (close without saving to cancel).\n"
              "# The conclusion goes above the #### line, the reasoning below it. Lines starting '# ' up here are ignored.\n")
_FIXED_LINES = 16  # screen lines that are not the source text (header, panels' frames, answer, keys)


class Terminal:
    """Single keys from a real terminal (cbreak mode), and line input when a prompt needs it."""

    def __init__(self, stream: TextIO = sys.stdin) -> None:
        self.fd = stream.fileno()
        self._saved = termios.tcgetattr(self.fd)
        self._pending: list[str] = []  # keys read but not handed out yet: typing ahead loses nothing

    def __enter__(self) -> Self:
        tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)

    def key(self) -> str:
        """The next key pressed: every keystroke counts, also several read at once ("aaaa", "r1")."""
        while not self._pending:
            data = os.read(self.fd, 64)
            if not data:
                raise EOFError  # the terminal went away
            self._pending = split_keys(data.decode("utf-8", "ignore"))
        return self._pending.pop(0)

    @contextmanager
    def lines(self) -> Iterator[None]:
        """Normal line editing (echo, backspace) for the duration."""
        termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
        try:
            yield
        finally:
            tty.setcbreak(self.fd)

    def ask(self, prompt: str, prefill: str = "") -> str:
        """A line of text, starting from `prefill` (editable in place where readline exists)."""
        try:
            import readline
        except ImportError:
            readline = None  # type: ignore[assignment]
        with self.lines():
            if readline is not None:
                readline.set_startup_hook(lambda: readline.insert_text(prefill))
            try:
                return input(prompt)
            except EOFError:  # Ctrl-D at a prompt: an empty answer, not the end of the review
                return ""
            finally:
                if readline is not None:
                    readline.set_startup_hook()


def split_keys(text: str) -> list[str]:
    """Keys in what the terminal delivered: an arrow's escape sequence is one key, any other character one key."""
    keys, i = [], 0
    while i < len(text):
        arrow = next((seq for seq in _ARROWS if text.startswith(seq, i)), None)
        keys.append(_ARROWS[arrow] if arrow else text[i])
        i += len(arrow) if arrow else 1
    return keys


def source_window(text: str, spans: list[tuple[int, int]], size: int) -> tuple[int, int]:
    """The [start, end) window of at most `size` characters that shows the most highlighted text."""
    if len(text) <= size:
        return 0, len(text)
    covered = [0] * (len(text) + 1)
    for start, end in spans:
        for i in range(start, end):
            covered[i + 1] = 1
    for i in range(1, len(covered)):
        covered[i] += covered[i - 1]
    starts = {0} | {max(0, min(s - size // 8, len(text) - size)) for s, _ in spans}
    best = max(sorted(starts), key=lambda s: covered[s + size] - covered[s])
    return best, best + size


class ReviewScreen:
    def __init__(self, session: ReviewSession, console: Console, terminal: Terminal, *, plan_line: str,
                 plan_text: list[str] | None = None, editor: str | None = None) -> None:
        self.session, self.console, self.terminal = session, console, terminal
        self.plan_line, self.plan_text, self.editor = plan_line, plan_text or [], editor

    # -- drawing --------------------------------------------------------------------------------

    def _header(self, index: int | None) -> Text:
        s = self.session
        counts = s.counts()
        text = Text(f"distill-qc review · sample {s.sample.name} · reviewer {s.reviewer} · {self.plan_line}\n", style="bold")
        if index is not None:
            text.append(f"record {index + 1} of {len(s)}", style="bold cyan")
            text.append(" · ")
        text.append(f"done {s.done}/{len(s)} (accept {counts['accept']} · reject {counts['reject']} · fix {counts['fix']})")
        if index is not None and (mine := s.verdict(index)) is not None:
            text.append(f"   your verdict: {mine.verdict}" + (f" ({mine.reason})" if mine.reason else ""), style="bold magenta")
        return text

    def _source(self, ctx: Context) -> Panel:
        ann, chunk, text = ctx.annotation, ctx.chunk, ctx.source
        quoted = f"{ann.conclusion or ''}\n{ann.reasoning or ''}\n{ann.input or ''}"
        spans = shared_spans(text, quoted)
        width, height = self.console.size
        # Wide (CJK) characters take two cells: size the window for the worst case.
        size = max(160, (height - _FIXED_LINES) * max(20, width - 4) // 2)
        start, end = source_window(text, spans, size)
        body = Text()
        if start:
            body.append(f"… ({start} characters before) ", style="dim")
        piece = Text(text[start:end])
        for s, e in spans:
            if e > start and s < end:
                piece.stylize("black on yellow", max(s, start) - start, min(e, end) - start)
        body.append_text(piece)
        if end < len(text):
            body.append(f" … ({len(text) - end} characters after)", style="dim")
        title = f"source · {ctx.where} · chars {chunk.char_start}-{chunk.char_end}"
        if ann.origin is not None:  # the reviewer must know the text is not the document's own
            title = f"source · {ann.origin} of {ctx.where}" + (" (text rewritten)" if ann.text is not None else "")
        return Panel(body, title=title, title_align="left", border_style="blue")

    def _answer(self, ctx: Context, mine: Review | None) -> Panel:
        """The teacher's answer; after a fix, the reviewer's corrected one, with the teacher's below."""
        ann = ctx.annotation
        body = Text()
        if ann.input:
            body.append("question:   ", style="bold").append(ann.input + "\n")
        if mine is not None and mine.verdict == "fix":
            body.append("conclusion: ", style="bold").append(mine.conclusion or "", style="bold magenta").append("\n")
            body.append("reasoning:  ", style="bold").append((mine.reasoning or "") + "\n")
            body.append(f"(the teacher wrote: {ann.conclusion or ''}{SEPARATOR}{ann.reasoning or ''})", style="dim")
            return Panel(body, title=f"answer · your fix of teacher {ann.model}'s", title_align="left",
                         border_style="magenta")
        body.append("conclusion: ", style="bold").append(ann.conclusion or "", style="bold green").append("\n")
        body.append("reasoning:  ", style="bold").append(ann.reasoning or "")
        return Panel(body, title=f"answer · teacher {ann.model}", title_align="left", border_style="green")

    def _notes(self, ctx: Context) -> Text:
        flags = self.session.flags.get(ctx.annotation.id, [])
        text = Text()
        for flag in flags:
            text.append(f"⚑ {flag.kind}: {flag.detail}\n", style="yellow")
        for j in self.session.judgements.get(ctx.annotation.id, []):
            text.append(f"judge {j.model}: {j.score if j.score is not None else '?'}/10 {j.reason[:120]}\n", style="cyan")
        return text

    def render(self, index: int | None, message: str = "") -> None:
        c = self.console
        c.clear()
        parts: list[RenderableType] = [self._header(index)]
        if index is None:
            parts.append(Text(f"\nAll {len(self.session)} records of sample {self.session.sample.name} have your verdict. "
                              "Thank you! [b] back to revisit, [q] quit.\n", style="bold green"))
        else:
            ctx = self.session.context(index)
            labels = ctx.task.labels(ctx.annotation.step)
            task_line = Text(f"task {ctx.task.name} ({ctx.annotation.step})", style="bold")
            if labels:
                task_line.append(f" · labels {' | '.join(labels)}")
            task_line.append(f"\nstudent instruction: {ctx.instruction}", style="dim")
            parts += [task_line, self._source(ctx), self._answer(ctx, self.session.verdict(index)), self._notes(ctx)]
        if message:
            parts.append(Text(message, style="bold yellow"))
        parts.append(Text(KEYS, style="reverse"))
        c.print(Group(*parts))
        c.file.flush()

    # -- prompts --------------------------------------------------------------------------------

    def _pick_reason(self, *, required: bool) -> str | None:
        """A reason key; "" for none (Enter or Esc, when not required); None when cancelled (Esc)."""
        menu = "  ".join(f"[{n}] {REASONS[k]}" for n, k in _REASON_KEYS.items())
        tail = "  [Esc] cancel" if required else "  [Enter] no reason"
        self.console.print(Text(("Why? " if required else "What was wrong? ") + menu + tail, style="bold"))
        while True:
            key = self.terminal.key()
            if key in _REASON_KEYS:
                self.console.print(Text(f"reason: {REASONS[_REASON_KEYS[key]]}", style="bold magenta"))
                return _REASON_KEYS[key]
            if key in ("\n", "\r", "\x1b") and not required:
                return ""
            if key == "\x1b":
                return None

    def _pick_conclusion(self, ctx: Context) -> str | None:
        """The corrected conclusion: a label by number, or a line of text. None when cancelled."""
        current = ctx.annotation.conclusion or ""
        labels = ctx.task.labels(ctx.annotation.step)
        if not labels:
            return self.terminal.ask("conclusion: ", current).strip()
        menu = "  ".join(f"[{i}] {label}" for i, label in enumerate(labels, 1))
        self.console.print(Text(f"New conclusion: {menu}  [Enter] keep '{current}'  [Esc] cancel", style="bold"))
        while True:
            key = self.terminal.key()
            if key in ("\n", "\r"):
                return current
            if key == "\x1b":
                return None
            if key.isdigit() and 1 <= int(key) <= len(labels):
                self.console.print(Text(f"conclusion: {labels[int(key) - 1]}", style="bold magenta"))
                return labels[int(key) - 1]

    def _edit(self, ctx: Context) -> tuple[str, str] | None:
        """A valid (conclusion, reasoning) from $EDITOR; None when the reviewer closes it unsaved.

        An edit that does not validate reopens with the reviewer's own text and the problem on
        top: what they wrote is never thrown away.
        """
        ann = ctx.annotation
        text = f"{_EDIT_HELP}{ann.conclusion or ''}\n{SEPARATOR}\n{ann.reasoning or ''}\n"
        while True:
            with self.terminal.lines():
                edited = click.edit(text, editor=self.editor, extension=".txt", require_save=True)
            if edited is None:
                return None
            lines = edited.splitlines()
            while lines and lines[0].startswith("# "):
                lines.pop(0)
            body = "\n".join(lines) + "\n"
            if SEPARATOR not in (line.strip() for line in lines):
                text = f"# NOT SAVED: keep the {SEPARATOR} line between the conclusion and the reasoning.\n{_EDIT_HELP}{body}"
                continue
            cut = next(i for i, line in enumerate(lines) if line.strip() == SEPARATOR)
            conclusion, reasoning = "\n".join(lines[:cut]).strip(), "\n".join(lines[cut + 1 :]).strip()
            try:
                validate_fix(ctx, conclusion, reasoning)
            except ReviewError as exc:
                text = f"# NOT SAVED: {exc}.\n{_EDIT_HELP}{body}"
                continue
            return conclusion, reasoning

    # -- actions --------------------------------------------------------------------------------

    # Each action returns (saved, what to tell the reviewer); a saved verdict moves on.

    def _reject(self, index: int) -> tuple[bool, str]:
        reason = self._pick_reason(required=True)
        if reason is None:
            return False, "not saved: rejection cancelled"
        note = self.terminal.ask("note (Enter for none): ").strip()
        self.session.give(index, "reject", reason=reason, note=note or None)
        return True, f"saved: reject ({REASONS[reason]})"

    def _fix(self, index: int, in_editor: bool) -> tuple[bool, str]:
        ctx = self.session.context(index)
        if in_editor:
            edited = self._edit(ctx)
            if edited is None:
                return False, "not saved: the editor closed without saving"
            conclusion, reasoning = edited
        else:
            picked = self._pick_conclusion(ctx)
            if picked is None:
                return False, "not saved: fix cancelled"
            conclusion = picked
            reasoning = self.terminal.ask("reasoning: ", ctx.annotation.reasoning or "").strip()
            try:
                validate_fix(ctx, conclusion, reasoning)
            except ReviewError as exc:
                return False, f"not saved: {exc}"
        # The correction is typed: from here on nothing cancels it (Esc just gives no reason).
        reason = self._pick_reason(required=False) or None
        self.session.give(index, "fix", reason=reason, conclusion=conclusion, reasoning=reasoning)
        return True, f"saved: fix, conclusion '{conclusion}'" + (f" ({REASONS[reason]})" if reason else "")

    def _help(self) -> None:
        self.console.clear()
        lines = [KEYS, "", "a  accept: the answer is right as it stands",
                 "r  reject: pick why (below), add a note if you like",
                 "f  fix here: pick the right label (or edit the text), then edit the reasoning on one line",
                 "e  fix in your $EDITOR: for longer or multi-line reasoning",
                 "s  skip: decide later (you come back to it at the end); b back: the previous record",
                 "q  quit: every verdict is already saved; `distill-qc review` picks up where you left off",
                 "", "Reasons:", *(f"  {n}  {REASONS[k]}" for n, k in _REASON_KEYS.items()),
                 "", "The source text highlights the parts the answer quotes. Press any key."]
        self.console.print(Text("\n".join(lines)))
        self.console.file.flush()
        self.terminal.key()

    def run(self) -> None:
        """Show records until the reviewer quits (q, Ctrl-C, or the terminal closes)."""
        s = self.session
        index = s.resume_index()
        if s.done:
            message = f"welcome back: {s.done} of {len(s)} done, resuming at the first open record"
        else:  # a first start: what this sample will decide, in plain words
            message = "\n".join(self.plan_text)
        while True:
            self.render(index, message)
            message = ""
            try:
                key = self.terminal.key()
            except (EOFError, KeyboardInterrupt):
                return
            if key in ("q", "Q", "\x04"):
                return
            if key == "?":
                self._help()
                continue
            if key == "b":
                index = len(s) - 1 if index is None else max(0, index - 1)
                continue
            if index is None:
                continue
            try:
                if key == "a":
                    s.give(index, "accept")
                    saved, message = True, "saved: accept"
                elif key == "s":
                    s.give(index, "skip")
                    saved, message = True, "skipped: you will come back to it"
                elif key == "r":
                    saved, message = self._reject(index)
                elif key in ("f", "e"):
                    saved, message = self._fix(index, in_editor=key == "e")
                else:
                    saved, message = False, f"unknown key {key!r}: press ? for help"
            except KeyboardInterrupt:
                saved, message = False, "cancelled"
            except EOFError:
                return
            if saved:
                index = s.next_open(index)
