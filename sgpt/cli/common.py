"""What every tool shares: error lines, exit codes, shards, progress, common options.

Exit status: 0 when every input was done, 1 when some failed (each named on stderr as
``sgpt-TOOL: error: ID: reason``), 2 for usage errors. A closed stdout (``| head``) ends
the tool quietly; no traceback ever reaches the user.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import click

from sgpt.core.errors import SgptError

DEVICE_HELP = "auto (CUDA when available), cpu, cuda or cuda:N"
DTYPE_HELP = "auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16"


class StrictStop(Exception):
    """Raised after the first failure under --strict."""


class Reporter:
    """Counts failures and prints one line for each on stderr."""

    def __init__(self, tool: str, strict: bool = False):
        self.tool = tool
        self.strict = strict
        self.failures = 0

    def error(self, where: str, reason: str) -> None:
        self.failures += 1
        click.echo(f"{self.tool}: error: {where}: {reason}", err=True)
        if self.strict:
            raise StrictStop

    def warn(self, message: str) -> None:
        click.echo(f"{self.tool}: warning: {message}", err=True)

    def info(self, message: str) -> None:
        click.echo(f"{self.tool}: {message}", err=True)

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


def run_tool(tool: str) -> Callable:
    """Wrap a click command's body: map errors to one stderr line and an exit status.

    The body returns its exit status (or None for 0).
    """

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                code = fn(*args, **kwargs) or 0
                sys.stdout.flush()
            except (click.ClickException, click.exceptions.Exit, click.Abort):
                raise  # click reports usage errors itself (exit status 2)
            except StrictStop:
                code = 1
            except BrokenPipeError:
                _silence_stdout()
                code = 0
            except SgptError as e:
                click.echo(f"{tool}: error: {e}", err=True)
                code = 1
            except KeyboardInterrupt:
                click.echo(f"{tool}: interrupted", err=True)
                code = 130
            except MemoryError:
                click.echo(f"{tool}: error: out of memory", err=True)
                code = 1
            except Exception as e:  # a bug: still one line, the traceback on request
                if os.environ.get("SGPT_DEBUG"):
                    raise
                click.echo(f"{tool}: internal error: {type(e).__name__}: {e} "
                           "(set SGPT_DEBUG=1 for the traceback)", err=True)
                code = 1
            sys.exit(code)

        return inner

    return wrap


def console_main(command: click.Command, prog_name: str) -> None:
    """A tool's console script: run ``command``, then leave without tearing down the
    interpreter. Freeing torch's and transformers' modules at exit takes about a second,
    paid after the work is done by every invocation in a pipeline; everything the tools
    write is closed by then (files in ``with`` blocks, atomic renames done), and stdout and
    stderr are flushed here. Not for sgpt-train, whose distributed runs shut down their
    process group at exit."""
    try:
        command.main(prog_name=prog_name)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            click.echo(e.code, err=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code)


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


class DefaultGroup(click.Group):
    """A group whose first subcommand runs when the arguments name none.

    ``sgpt-units a.wav`` is ``sgpt-units encode a.wav``; ``--help`` still shows the group.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h",
                                                                             "--version")):
            args = [next(iter(self.commands)), *args]
        return super().parse_args(ctx, args)


class TableChoice(click.Choice):
    """click.Choice over the names of a table (a dict such as sgpt.units.encoders'
    DENSE_MODELS), read when the command line is parsed: an entry added is a choice."""

    def __init__(self, table: dict):
        self.table = table
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self.table)


def check_output(output: str, inputs: Sequence[str] = (), option: str = "-o") -> None:
    """``-o FILE`` checked before any work (a usage error naming it): not a directory, not
    one of the inputs (writing there would lose them, or 'resume' from them), and in a
    directory that exists or can be made, and can be written."""
    def bad(reason: str) -> click.BadParameter:
        return click.BadParameter(reason, param_hint=f"'{option}'")

    if output == "-":
        return
    if os.path.isdir(output):
        raise bad(f"{output} is a directory: name the output file")
    for source in inputs:
        if source != "-" and os.path.exists(output) and os.path.exists(source) \
                and os.path.samefile(output, source):
            raise bad(f"{output} is also an input: write into another file")
    from sgpt.core.files import unwritable

    reason = unwritable(output)
    if reason:
        raise bad(f"{output}: {reason}")


def check_output_dir(output: str) -> None:
    """``-o DIR`` checked before any work: not a file, and makeable and writable."""
    if output == "-":
        return
    if os.path.exists(output) and not os.path.isdir(output):
        raise click.BadParameter(f"{output} is a file: name a directory", param_hint="'-o'")
    check_output(os.path.join(output, "x"))


def parse_shard(value: str | None) -> tuple[int, int]:
    """``I/N`` (0-based I) -> (I, N). None -> from SLURM array variables, else (0, 1)."""
    if value is None:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        count = os.environ.get("SLURM_ARRAY_TASK_COUNT")
        if task is None or count is None:
            return 0, 1
        value = f"{int(task) - int(os.environ.get('SLURM_ARRAY_TASK_MIN', '0'))}/{count}"
    try:
        index, count = (int(x) for x in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not I/N (e.g. 0/4)",
                                 param_hint="--shard") from None
    if count < 1 or not 0 <= index < count:
        raise click.BadParameter(f"{value!r}: need 0 <= I < N", param_hint="--shard")
    return index, count


def shard_range(total: int, index: int, count: int) -> range:
    """The contiguous slice of ``total`` items that shard ``index`` of ``count`` takes.

    Contiguous (as fairseq's feature dumping does), so shard outputs concatenated in
    shard order are in input order.
    """
    return range(round(total * index / count), round(total * (index + 1) / count))


def shard_items(items: Sequence, shard: tuple[int, int]) -> Sequence:
    return [items[i] for i in shard_range(len(items), *shard)]


@contextmanager
def progress_bar(enabled: bool | None, total: int | None, description: str):
    """A rich progress bar on stderr; ``enabled`` None means: when stderr is a terminal.

    Yields ``advance(n=1)``.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def _check_device(ctx, param, value: str) -> str:
    """A misspelt --device is a usage error (exit 2); whether CUDA is there is checked later."""
    if value != "auto" and re.fullmatch(r"cpu|cuda(:\d+)?", value) is None:
        raise click.BadParameter(f"{value!r}: use auto, cpu, cuda or cuda:N")
    return value


def _check_dtype(ctx, param, value: str) -> str:
    if value not in ("auto", "float32", "bfloat16", "float16"):
        raise click.BadParameter(f"{value!r}: use auto, float32, bfloat16 or float16")
    return value


def device_options(fn: Callable) -> Callable:
    """--device and --dtype."""
    fn = click.option("--dtype", default="auto", show_default=True, help=DTYPE_HELP,
                      callback=_check_dtype)(fn)
    return click.option("--device", default="auto", show_default=True, help=DEVICE_HELP,
                        callback=_check_device)(fn)


def run_options(fn: Callable) -> Callable:
    """--strict and --progress/--no-progress."""
    fn = click.option("--progress/--no-progress", default=None,
                      help="Progress bar on stderr (default: when stderr is a terminal).")(fn)
    return click.option("--strict", is_flag=True,
                        help="Stop at the first failed input (exit status 1).")(fn)


def shard_option(fn: Callable) -> Callable:
    return click.option(
        "--shard", metavar="I/N", default=None,
        help="Take shard I (0-based) of N contiguous shards of the inputs; default from "
             "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, else all.")(fn)
