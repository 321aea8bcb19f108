"""Progress output: live bars on a terminal, plain lines everywhere else.

A bar redraws itself with carriage returns, which is what a person at a terminal
wants and what turns a log file or a CI page into noise. So bars are drawn only when
the stream is a terminal and `CI` is not set (CI services set it, and some of them
emulate a terminal); otherwise the training loop prints one line per log event (step,
loss, steps/s, ETA), evaluation prints its result line only, and TFDS's own
dataset-preparation bars are switched off.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")


def ci() -> bool:
    """Whether `CI` is set to anything but empty, `0` or `false`."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def interactive(stream: IO | None = None) -> bool:
    """Whether bars may be drawn on `stream` (default stdout): a terminal, and not CI."""
    stream = sys.stdout if stream is None else stream
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real stream
        tty = False
    return tty and not ci()


def _width() -> dict[str, Any]:
    """tqdm's size arguments: follow the terminal, or 100×24 where it reports 0×0 (tqdm would draw nothing)."""
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
        if size.columns > 0 and size.lines > 0:
            return {"dynamic_ncols": True}
    except (OSError, ValueError, AttributeError):
        pass
    return {"ncols": 100, "nrows": 24}


class Bar:
    """A training progress bar that degrades to lines.

    Live (a terminal, `print_fn` is `print`): a tqdm bar of steps with loss, steps/s and
    ETA, and `print` writes its lines above the bar. Otherwise `update` and `postfix`
    do nothing and `print` is `print_fn`: the caller's lines are the progress output.

    Args:
      total: steps of the whole run.
      initial: steps already done (a resumed run).
      desc: the bar's label.
      print_fn: where lines go when there is no bar.
    """

    def __init__(self, total: int, *, initial: int = 0, desc: str = "train",
                 print_fn: Callable[[str], None] = print, unit: str = "step"):
        self.print_fn = print_fn
        self._bar = None
        if print_fn is print and interactive(sys.stdout):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stdout,
                             smoothing=0.1, **_width())

    @property
    def live(self) -> bool:
        return self._bar is not None

    def print(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=sys.stdout)
        else:
            self.print_fn(line)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def postfix(self, values: dict[str, Any]) -> None:
        """Shows `values` (numbers as 4 significant digits) beside the bar."""
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in values.items()},
                                  refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def track(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """`iterable`, with a bar that vanishes when done on a terminal; unchanged elsewhere."""
    if not interactive(sys.stdout):
        yield from iterable
        return
    from tqdm import tqdm

    yield from tqdm(iterable, desc=desc, total=total, file=sys.stdout, leave=False, **_width())


@contextlib.contextmanager
def tfds_bars() -> Iterator[None]:
    """TFDS's preparation bars on while inside, only if stderr (where tqdm draws) is a terminal."""
    from tensorflow_datasets.core.utils import tqdm_utils

    before = getattr(tqdm_utils, "_active", True)  # a user's tfds.disable_progress_bar() stays
    tqdm_utils.display_progress_bar(before and interactive(sys.stderr))
    try:
        yield
    finally:
        tqdm_utils.display_progress_bar(before)
