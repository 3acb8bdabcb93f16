"""Run the numbered notebooks in order with papermill: the whole experiment as one command.

Layer: commands; imports the profile, evaluation, progress and the run folder's layout.

    python -m fcdpo.pipeline --profile tiny-cpu            # what `make reproduce` runs
    python -m fcdpo.pipeline --profile tiny-cpu --only 01  # one stage

Each notebook gets the same `profile` parameter (plus any `-p key=value`); the executed copies go to the
run folder (`runs/<profile>/notebooks/`), never back into `notebooks/`, which stay without outputs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

import yaml

from fcdpo import runs
from fcdpo.config import CONFIG_DIR, load_profile

NOTEBOOK_DIR = CONFIG_DIR.parent / "notebooks"


def stages(only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks in order (`01_…` to `05_…`), or those whose number is in `only`."""
    found = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [p for p in found if p.name[:2] in only]
    return found


def reproduce(
    profile: str = "tiny-cpu",
    parameters: dict[str, Any] | None = None,
    only: list[str] | None = None,
    output_dir: str | Path | None = None,
) -> list[Path]:
    """Execute the notebooks for `profile`; returns the paths of the executed copies.

    A failing notebook stops the run with papermill's error, and its partly executed copy is kept in
    the output folder so the failing cell can be read there.
    """
    import papermill

    from fcdpo.progress import HEADLESS

    parameters = dict(parameters or {})
    run_path = run_folder(profile, parameters)
    # The kernels inherit this environment: long steps report in lines, which papermill forwards
    # here from each cell's stdout as it runs, under its own bar over the notebook's cells.
    os.environ.setdefault(HEADLESS, "1")
    output_dir = Path(output_dir) if output_dir else runs.notebooks_dir(run_path)
    output_dir.mkdir(parents=True, exist_ok=True)
    executed = []
    for notebook in stages(only):
        started = time.perf_counter()
        target = output_dir / notebook.name
        print(f"▶ {notebook.name} (profile {profile})", flush=True)
        declared = papermill.inspect_notebook(str(notebook))  # each notebook gets the parameters it declares
        papermill.execute_notebook(
            str(notebook),
            str(target),
            parameters={k: v for k, v in {"profile": profile, **parameters}.items() if k in declared},
            kernel_name="python3",
            cwd=str(NOTEBOOK_DIR),
            progress_bar={"desc": notebook.stem, "unit": "cell", "leave": True},
            stdout_file=sys.stdout,
            kernel_manager_class=_local_kernel_manager(),
        )
        print(f"  done in {time.perf_counter() - started:.0f} s → {target}", flush=True)
        executed.append(target)
    return executed


def run_folder(profile: str, parameters: dict[str, Any] | None = None) -> Path:
    """The run folder the notebooks write to: the profile's, as the `overrides` parameter changes it."""
    return load_profile(profile, (parameters or {}).get("overrides") or {}).run_path


def _local_kernel_manager() -> type:
    """A kernel manager that talks to its kernel over local sockets (IPC) instead of TCP on localhost:
    nothing leaves the machine, and the kernel has no reason to warn about unencrypted traffic."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class LocalKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

    return LocalKernelManager


def results_table(profile: str, parameters: dict[str, Any] | None = None) -> "pd.DataFrame | None":
    """The run's headline results (notebook 04's summary), or None before an evaluation exists."""
    import pandas as pd

    from fcdpo.evaluation import report_table

    summary = runs.evaluation_dir(run_folder(profile, parameters)) / "summary.csv"
    if not summary.exists():
        return None
    columns = ["model", "dataset", "problems", "accuracy [95% CI]", "valid calls", "mean steps"]
    return report_table(pd.read_csv(summary))[columns]


def _parse_parameter(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny-cpu", help="a name from configs/ (default: tiny-cpu)")
    parser.add_argument("--only", nargs="*", help="notebook numbers to run, e.g. 01 02")
    parser.add_argument("-p", "--parameter", action="append", type=_parse_parameter, default=[],
                        help="notebook parameter key=value (YAML value), repeatable")
    parser.add_argument("--output-dir", help="where executed notebooks go (default: the run folder)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    executed = reproduce(args.profile, dict(args.parameter), args.only, args.output_dir)
    print(f"{len(executed)} notebook(s) executed in {time.perf_counter() - started:.0f} s")
    results = results_table(args.profile, dict(args.parameter))
    if results is not None:
        print("\nResults (held-out problems, greedy decoding):")
        print(results.to_string(index=False))


if __name__ == "__main__":
    main()
