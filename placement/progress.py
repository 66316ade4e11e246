"""Progress of long work: a tqdm bar in terminals and notebooks (tqdm's auto mode), a plain
line every few seconds when stderr is not a terminal (logs, batch jobs, pipes).

A reporter is the ``progress(done, total, note)`` callable that ``placement.budget.checkpoint``
calls between chunks; nothing shows for work that ends within ``delay`` seconds.
"""

from __future__ import annotations

import sys
import time

MODES = ("auto", "bar", "lines", "off")


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


def resolve(mode) -> str:
    """auto -> bar on a terminal or in a notebook, else lines; True -> auto; False/None -> off."""
    if mode is True:
        mode = "auto"
    if mode is False or mode is None:
        mode = "off"
    if mode not in MODES:
        from placement.errors import PlacementError

        raise PlacementError(f"progress must be one of {', '.join(MODES)}; got {mode!r}.")
    if mode == "auto":
        tty = getattr(sys.stderr, "isatty", lambda: False)()
        mode = "bar" if tty or _in_notebook() else "lines"
    return mode


def _count(x: float) -> str:
    """1048576 as it is, not 1.04858e+06; fractions as %g."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


class Reporter:
    """``Reporter(desc, unit, mode)(done, total, note)``. ``unit``: what ``done`` counts, or ""
    when work of several kinds reports through one reporter and each note starts with its
    own (suggest: "hyperparameter draws", "start-steps, ..."). ``delay``: seconds before anything
    shows; ``interval``: seconds between lines in the ``lines`` mode; ``leave``: keep the bar on
    screen when closed."""

    def __init__(self, desc: str, unit: str = "", mode="auto", delay: float = 2.0, interval: float = 5.0,
                 stream=None, leave: bool = False):
        self.desc, self.unit, self.mode = desc, unit, resolve(mode)
        self.delay, self.interval, self.leave = delay, interval, leave
        self.stream = sys.stderr if stream is None else stream
        self.t0 = time.perf_counter()
        self.last_line = self.t0 + delay - interval  # the first line comes after `delay`
        self.bar = None
        self.status = ""  # a standing note (budget.status), e.g. the precision reached so far

    def _make_bar(self, total):
        from tqdm.auto import tqdm

        kw = dict(desc=self.desc, total=total or None, unit=self.unit or "it", dynamic_ncols=True,
                  file=self.stream, leave=self.leave)
        try:
            return tqdm(**kw)
        except ImportError:  # a notebook without ipywidgets: tqdm's text bar
            from tqdm import tqdm as text

            return text(**kw)

    def __call__(self, done: float, total: float = 0, note: str = "", force: bool = False) -> None:
        """Show ``done`` of ``total``; ``force``: a line now, whatever the delay and interval."""
        if self.mode == "off":
            return
        now = time.perf_counter()
        if now - self.t0 < self.delay and not force:
            return
        note = "; ".join(x for x in (note, self.status) if x)
        if self.mode == "bar":
            if self.bar is None:
                self.bar = self._make_bar(total)
            if total and self.bar.total != total:
                self.bar.total = total
            self.bar.n = done
            self.bar.set_postfix_str(note, refresh=False)
            self.bar.refresh()
        elif force or now - self.last_line >= self.interval:
            self.last_line = now
            of = f"/{_count(total)}" if total else ""
            what = ", ".join(x for x in (self.unit, note) if x)  # no unit: the note names what is counted
            print(f"{self.desc}: {_count(done)}{of} {what} ({now - self.t0:.0f} s)", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
