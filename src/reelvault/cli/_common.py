"""What every command group shares: :class:`Output`, the ``common`` parent parser, error
reporting, the client, and the text renderings (times, tables, sizes, a progress bar).

Handlers reach the client through this module (``_common.client()``), so that a test
replaces it in one place for every group.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, TextIO, TypeAlias

from reelvault.client import Client

if TYPE_CHECKING:
    from reelvault.config import Settings

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Groups",
    "Handler",
    "Output",
    "ProgressBar",
    "add_dev_flag",
    "client",
    "common_parser",
    "deployment_settings",
    "describe_os_error",
    "describe_target",
    "fail",
    "human",
    "progress_bar",
    "showing",
    "table",
    "when",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Subscriptable only for type checkers (argparse's class is not generic at run time).
Groups: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


@dataclass(frozen=True, slots=True)
class Output:
    """What a command produced, in both renderings, so ``--json`` is never an afterthought.

    Attributes:
        data: printed as JSON with ``--json``; the stable, scriptable form.
        text: printed otherwise; for people, free to change.
        exit_code: what the command exits with once the output is printed (a command
            whose result is a verdict, such as ``scrub``, says it here).
    """

    data: dict[str, Any]
    text: str
    exit_code: int = EXIT_OK


Handler = Callable[[argparse.Namespace], Output]


def common_parser() -> argparse.ArgumentParser:
    """The parent parser of every leaf command: what all of them accept."""
    # Accept --json after the subcommand too. SUPPRESS keeps a subcommand that was not
    # given --json from resetting the value set before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    return common


def fail(message: str) -> int:
    print(f"reelvault: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def describe_os_error(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return exc.strerror or str(exc)


def client(**options: Any) -> Client:
    return Client(**options)


def add_dev_flag(parser: argparse.ArgumentParser) -> None:
    """``--dev`` for a command that writes to a deployment (see :func:`deployment_settings`)."""
    parser.add_argument(
        "--dev",
        action="store_true",
        help="allow the dev defaults: the catalog and keyring under .reelvault/ here "
        "(refused otherwise unless REELVAULT_DATABASE_URL, REELVAULT_DATA_DIR or a config "
        "naming one of them is given)",
    )


def deployment_settings(args: argparse.Namespace, command: str) -> Settings:
    """The settings of the deployment ``command`` writes to, announced on stderr.

    Refused when nothing names the catalog (neither ``data_dir`` nor ``database_url`` in
    the environment or the config file) and ``--dev`` was not given: the command would
    then create or use ``.reelvault/catalog.sqlite3`` in the working directory, a catalog
    no service reads, silently.

    Raises:
        ConfigurationError: the dev defaults without ``--dev``, or a bad setting.
    """
    from reelvault.config import Settings  # noqa: PLC0415 - startup time
    from reelvault.errors import ConfigurationError  # noqa: PLC0415

    config = getattr(args, "config", None)
    settings = Settings.load(config_file=config)
    if not getattr(args, "dev", False) and not Settings.given(config_file=config) & {
        "data_dir",
        "database_url",
    }:
        raise ConfigurationError(
            f"{command} would act on the dev defaults ({settings.shown_database_url} in "
            "this directory): set REELVAULT_DATABASE_URL or REELVAULT_DATA_DIR (or "
            "database_url or data_dir in the --config file) to the deployment's, or pass "
            "--dev to use the dev defaults"
        )
    print(f"reelvault {command}: {describe_target(settings)}", file=sys.stderr)
    return settings


def describe_target(settings: Settings) -> str:
    """Which catalog, bucket and root key provider a command acts on; no secret."""
    from reelvault.catalog.db import safe_endpoint  # noqa: PLC0415 - startup time

    endpoint = safe_endpoint(settings.s3_endpoint_url) if settings.s3_endpoint_url else "AWS S3"
    if settings.root_key_provider == "aws-kms":
        keys = f"aws-kms key {settings.kms_key_id}"
    else:
        keys = f"local keyring {settings.resolved_keyring_path}"
    return (
        f"catalog {settings.shown_database_url}, bucket {settings.s3_bucket} at {endpoint}, "
        f"root keys {keys}"
    )


def when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, empty: str) -> str:
    if not rows:
        return empty
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def human(size: float) -> str:
    """``512 B``, ``3.0 MiB``: binary units, one decimal."""
    unit = "B"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size /= 1024
        unit = larger
    return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"


def progress_bar(args: argparse.Namespace, total: int | None) -> ProgressBar | None:
    """A progress line on stderr, for people only: not with --json nor when stderr is
    not a terminal (a log file or a pipe would get a line per redraw)."""
    if args.json or not sys.stderr.isatty():
        return None
    return ProgressBar(total, sys.stderr)


@contextlib.contextmanager
def showing(bar: ProgressBar | None) -> Iterator[None]:
    """Leave the finished bar on screen after a transfer; erase it after a failure, so the
    error line that follows stands alone."""
    try:
        yield
    except BaseException:
        if bar is not None:
            bar.erase()
        raise
    if bar is not None:
        bar.finish()


class ProgressBar:
    """Bytes done, rate and ETA on one terminal line, redrawn at most ten times a second.

    Called from a gRPC worker thread during uploads, hence the lock.
    """

    _INTERVAL: Final = 0.1

    def __init__(self, total: int | None, stream: TextIO) -> None:
        self._total = total
        self._stream = stream
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._drawn = 0.0
        self._shown = False
        self._done = 0

    def __call__(self, done: int) -> None:
        with self._lock:
            self._done = done
            now = time.monotonic()
            if now - self._drawn >= self._INTERVAL:
                self._drawn = now
                self._draw(now)

    def finish(self) -> None:
        with self._lock:
            self._draw(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()

    def erase(self) -> None:
        with self._lock:
            if self._shown:
                self._stream.write("\r\x1b[K")
                self._stream.flush()

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self._done / elapsed
        parts = [human(self._done)]
        if self._total:
            parts[0] += f" / {human(self._total)}"
            parts.append(f"{100 * self._done // self._total:3d}%")
        parts.append(f"{human(rate)}/s")
        if self._total and rate > 0:
            parts.append(f"ETA {_duration(max(self._total - self._done, 0) / rate)}")
        # \r returns to the line start, ESC[K clears what a longer earlier line left.
        self._stream.write("\r" + "  ".join(parts) + "\x1b[K")
        self._stream.flush()
        self._shown = True


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
