"""The `geoseg` command line: thin commands over the library API."""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings
from typing import Any

import click

from geoseg import __version__, errors
from geoseg.errors import GeosegError, GeosegWarning, UsageError, redact


def to_log_file(level: int, message: str) -> None:
    """A line printed on stderr, also written to the --log-file (if any): a batch job run with
    `-q --log-file` finds there every refusal, warning and error it printed."""
    log = logging.getLogger("geoseg")
    record = log.makeRecord(log.name, level, __file__, 0, redact(message), (), None)
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def say(level: int, line: str) -> None:
    """`geoseg: LINE` on stderr, and in the --log-file."""
    line = redact(line)
    click.echo(f"geoseg: {line}", err=True)
    to_log_file(level, line)


def echo(text: str, err: bool = False) -> None:
    """What a command prints, a URL's secrets taken out (`geoseg.errors.redact`)."""
    click.echo(redact(text), err=err)


class _Redact(logging.Filter):
    """Log lines without a URL's secrets, on stderr and in the --log-file."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        return True


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    if issubclass(category, GeosegWarning):  # libraries' warnings are for developers, not users
        say(logging.WARNING, f"warning: {message}")


class _Group(click.Group):
    """Turns geoseg's errors into one line on stderr and the right exit code."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        given = args[0] if args else kwargs.get("args")
        errors.keep_secret(*(sys.argv[1:] if given is None else given))  # a URL's secrets, however it is cut later
        before, errors.cli_terms = errors.cli_terms, True  # library messages name --flags here
        try:
            rv = super().main(*args, **kwargs)
        except click.UsageError as e:  # click's own: bad option values, missing arguments
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
            click.echo(f"geoseg: error: {e.format_message()}{hint}", err=True)
            sys.exit(2)
        except click.ClickException as e:
            click.echo(f"geoseg: error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("geoseg: aborted", err=True)
            sys.exit(1)
        finally:
            errors.cli_terms = before
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as e:
            say(logging.ERROR, f"error: {e}")
            ctx.exit(2)
        except GeosegError as e:
            say(logging.ERROR, f"error: {e}")
            ctx.exit(1)
        except KeyboardInterrupt:
            say(logging.ERROR, "interrupted: no output was written; rerun the same command to resume")
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:  # a bug or an unforeseen failure: one line, traceback with -v
            if logging.getLogger("geoseg").isEnabledFor(logging.DEBUG):
                traceback.print_exc()
            if errors.disk_full(e):
                where = getattr(e, "filename", None) or "a folder geoseg writes to"
                say(logging.ERROR, f"error: {errors.DiskFullError(where)}")
                ctx.exit(1)
            say(logging.ERROR, f"error: {type(e).__name__}: {e} (run with -v for details)")
            ctx.exit(1)


class _Progress(logging.Filter):
    """Keeps progress lines off stderr where a bar shows them, or with --quiet."""

    def __init__(self, quiet: bool) -> None:
        super().__init__()
        self.drop = quiet or sys.stderr.isatty()

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.drop and record.name == "geoseg.run.progress")


def log_to(log_file: str | None, quiet: bool) -> None:
    """Progress lines on stderr unless quiet or on a terminal; everything, with times, to `log_file`.

    Quiet leaves only warnings and errors on stderr, also those of the libraries
    that load the model (Hugging Face's loading bars and notices).
    """
    log = logging.getLogger("geoseg")
    for h in log.handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.addFilter(_Progress(quiet))
            if quiet and not log.isEnabledFor(logging.DEBUG):
                h.setLevel(logging.WARNING)
    if quiet:
        _quiet_hugging_face()
    if log_file is not None:
        try:
            handler = logging.FileHandler(log_file)
        except OSError as e:
            raise UsageError(f"--log-file {log_file}: cannot write it ({e.strerror}): choose another path") from None
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_Redact())
        log.addHandler(handler)


def _quiet_hugging_face() -> None:
    # read when they are imported; set them on the module where it already is
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def _verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        logging.getLogger("geoseg").setLevel(logging.DEBUG)


VERBOSE_HELP = "Log each file's figures; tracebacks for unexpected errors."


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geoseg")
@click.option("-v", "--verbose", is_flag=True, help=VERBOSE_HELP)
def main(verbose: bool) -> None:
    """Text-prompted segmentation of GeoTIFFs with SAM 3, seam-free."""
    log = logging.getLogger("geoseg")
    log.handlers[:] = [logging.StreamHandler(sys.stderr)]
    log.handlers[0].setFormatter(logging.Formatter("geoseg: %(message)s"))
    log.handlers[0].addFilter(_Redact())
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:  # GDAL prints its errors on stderr as well: geoseg says each in one line
        os.environ.setdefault("CPL_LOG", os.devnull)
    warnings.showwarning = _show_warning


def _add_verbose(group: click.Group) -> None:
    """`-v` also after the command name (`geoseg segment ... -v`), on every command."""
    for cmd in group.commands.values():
        if isinstance(cmd, click.Group):
            _add_verbose(cmd)
        elif not any("--verbose" in p.opts for p in cmd.params):
            cmd.params.append(click.Option(["-v", "--verbose"], is_flag=True, expose_value=False, is_eager=True,
                                           callback=_verbose, help=VERBOSE_HELP))


from geoseg.cli import (  # noqa: E402,F401  (commands register on main)
    combine,
    distill,
    evaluate,
    export_dataset,
    fetch,
    info,
    qgis,
    segment,
    train,
)

_add_verbose(main)

__all__ = ["main", "combine", "distill", "evaluate", "export_dataset", "fetch", "info", "qgis", "segment", "train"]
