"""The ``fgdeploy`` command line: a click group whose commands live in ``fgdeploy/commands/``.

Each command module ``fgdeploy/commands/<name>.py`` defines ``command`` (a click command or
group). Modules import heavy libraries (torch, onnxruntime, tensorrt) inside the command body,
so ``fgdeploy --help`` stays fast. This module sets up logging (level from -v/-q); training adds
a train.log handler for its run folder and the demo quiets some chatty loggers. A ``FgdeployError``
or a file-system error becomes a one-line message and exit code 1.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from typing import Any

import click

from fgdeploy import __version__
from fgdeploy.errors import FgdeployError

logger = logging.getLogger(__name__)

# Listed in the order a user meets them; a name whose module does not exist yet is not shown.
COMMAND_NAMES: tuple[str, ...] = (
    "demo", "data", "train", "eval", "export", "parity", "infer", "serve", "bench", "doctor",
)


class LazyGroup(click.Group):
    """A group that imports a command module only when the command is listed or run."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMAND_NAMES if _command_module_exists(name)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMAND_NAMES or not _command_module_exists(cmd_name):
            return None
        module = importlib.import_module(f"fgdeploy.commands.{cmd_name}")
        return _with_verbosity_options(module.command)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list with each command's whole short help (click cuts it at 45 characters)."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=200)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise OneLineUsageError(exc) from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OneLineUsageError:
            raise
        except click.UsageError as exc:   # a bad option of a command: one line, exit 2
            raise OneLineUsageError(exc) from exc
        except FgdeployError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:   # a path that is not what the command needs: say which, not a traceback
            logger.debug("OSError in %s", ctx.invoked_subcommand, exc_info=True)
            raise click.ClickException(_describe_os_error(exc)) from exc


class OneLineUsageError(click.ClickException):
    """A usage error shown as one line (click prints the usage and a "Try --help" line first), exit code 2."""

    exit_code = 2

    def __init__(self, error: click.UsageError) -> None:
        where = error.ctx.command_path if error.ctx is not None else "fgdeploy"
        super().__init__(f"{error.format_message()} (see `{where} --help`)")


def _set_verbosity(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """-q / -v given after the command name: the same effect as before it."""
    if not value:
        return
    root = ctx.find_root()
    root.obj = root.obj if isinstance(root.obj, dict) else {}
    if param.name == "quiet":
        root.obj["quiet"] = True
        logging.getLogger().setLevel(logging.WARNING)
    elif not root.obj.get("quiet"):
        root.obj["verbose"] = int(root.obj.get("verbose") or 0) + int(value)
        logging.getLogger().setLevel(logging.DEBUG)


def _verbosity_options() -> list[click.Option]:
    return [click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_set_verbosity,
                         help="Debug log output (also accepted before the command)."),
            click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, callback=_set_verbosity,
                         help="Only warnings and errors; no progress bars (also accepted before the command).")]


def _with_verbosity_options(command: click.Command) -> click.Command:
    """``command`` (and a group's subcommands) accepting -q/-v after its name too (added once)."""
    taken = {opt for param in command.params for opt in getattr(param, "opts", [])}
    if not {"-q", "-v"} & taken and not isinstance(command, click.Group):
        command.params.extend(_verbosity_options())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _with_verbosity_options(sub)
    return command


def _describe_os_error(exc: OSError) -> str:
    """One line for a file-system error: what failed, on which path, and what to check."""
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    what = exc.strerror or str(exc)
    if not paths:
        return f"{what} (run with -v for the traceback)"
    return f"{paths}: {what}; check that the path and its parent folders exist, are the right kind " \
           f"(file or folder) and are writable"


def _command_module_exists(name: str) -> bool:
    return importlib.util.find_spec(f"fgdeploy.commands.{name}") is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fgdeploy")
@click.option("-v", "--verbose", count=True, help="Debug log output.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """fgdeploy: train, export and deploy keypoint-guided fine-grained classifiers.

    Runs offline: with no data given, commands use a generated synth-birds set.
    """
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = {"quiet": quiet, "verbose": verbose}


def main() -> None:
    """Console entry point."""
    cli()
