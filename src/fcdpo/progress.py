"""Progress of long steps, in a notebook and on the terminal of a headless run.

Layer: settings and formats; imports nothing of fcdpo.

In JupyterLab and on Colab, bars are tqdm's notebook widgets. `make reproduce` runs the notebooks
with papermill, whose kernels have no screen: there `fcdpo.pipeline` sets `HEADLESS` in the
environment, and the same bars become one plain line every `TQDM_MININTERVAL` seconds (default
20) on the kernel's stdout, which the pipeline forwards to the terminal:

    rollouts math:  42%|####2     | 2016/4800 [00:41<00:56, 49.2it/s]

This module only formats.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

HEADLESS = "FCDPO_HEADLESS_PROGRESS"  # set (to anything) by fcdpo.pipeline for the notebooks' kernels


@contextmanager
def quiet_bars(tqdm: bool = False):
    """While preprocessing: no `datasets` bar per pass (they would flood a notebook), and with `tqdm`
    none of tqdm's at all (TRL's bar over the reference's log-probabilities reads only `TQDM_DISABLE`).
    Both are put back as they were afterwards, whatever happens."""
    import datasets

    bars_were_enabled = datasets.is_progress_bar_enabled()
    tqdm_was = os.environ.get("TQDM_DISABLE")
    datasets.disable_progress_bars()
    if tqdm:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if bars_were_enabled:
            datasets.enable_progress_bars()
        if tqdm_was is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = tqdm_was


def headless() -> bool:
    """Whether progress goes to the terminal as lines (a papermill run) rather than to widgets."""
    return bool(os.environ.get(HEADLESS))


class _Lines:
    """A file for tqdm that turns its in-place redraws (`\\r…`) into whole lines, at most one every
    `interval` seconds (a bar's postfix forces a redraw at every update), and its last one on close."""

    def __init__(self, stream: Any, interval: float) -> None:
        self.stream, self.interval, self.last, self.pending = stream, interval, -float("inf"), ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip("\n")
        if not line.strip():
            return
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.stream.write(line + "\n")
            self.last, self.pending = now, ""
        else:
            self.pending = line

    def close(self) -> None:
        if self.pending:  # the state the bar was left in
            self.stream.write(self.pending + "\n")
            self.pending = ""

    def flush(self) -> None:
        self.stream.flush()


def bar(**kwargs: Any) -> Any:
    """A tqdm bar: notebook widgets or the console normally, whole lines in a headless run."""
    if headless():
        from tqdm.std import tqdm

        interval = float(os.environ.get("TQDM_MININTERVAL", 20))
        lines = _Lines(sys.stdout, interval)
        progress = tqdm(file=lines, mininterval=interval, maxinterval=interval, ascii=True, **kwargs)
        closing = progress.close

        def close() -> None:
            closing()
            lines.close()

        progress.close = close
        return progress
    from tqdm.auto import tqdm

    return tqdm(**kwargs)


def trainer_callback(log: Callable[[str], Any], what: str, every: int) -> Any:
    """A `transformers.TrainerCallback` that sends `what step 70/700 · loss 0.61 · 95 s · about 855 s left`
    to `log` every `every` steps and at the last step (steps resumed from a checkpoint do not count
    towards the estimate)."""
    from transformers import TrainerCallback

    class StepLog(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.started, self.first_step = time.perf_counter(), state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            step = state.global_step
            if not logs or "loss" not in logs or (step % every and step != state.max_steps):
                return
            elapsed = time.perf_counter() - self.started
            done = step - self.first_step
            left = f" · about {elapsed / done * (state.max_steps - step):.0f} s left" if done > 0 else ""
            log(f"{what}step {step}/{state.max_steps} · loss {logs['loss']:.3f} · {elapsed:.0f} s{left}")

    return StepLog()
