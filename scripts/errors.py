"""The bundle's exceptions: each message is a single line naming the file (or setting) and the problem.

Library code raises these and never ``SystemExit``; only a command line turns them into one printed line and
exit status 1 (``scripts.*`` mains through :func:`cli_main`, ``python -m monai.bundle run`` through the hook
the configs install with :func:`install_bundle_hook`). Servers (MONAI Label) and tests see the exceptions.

Hierarchy::

    LandmarkError                  base of everything the bundle raises on purpose
      LandmarkDataError            bad input data: datalists, landmark files, images (also a ValueError)
        GeometryError              an image geometry the reader policy refuses (shear, missing slices, ...)
      LandmarkConfigError          a bad setting: config id, CLI argument, plans, checkpoint vs config
"""

from __future__ import annotations

import functools
import logging
import sys


class LandmarkError(Exception):
    """Base of the bundle's own errors; ``str(error)`` is one line meant to be shown as is."""


class LandmarkDataError(LandmarkError, ValueError):
    """Bad input data: the message reads ``<file>: <problem>``."""

    def __init__(self, source, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


class GeometryError(LandmarkDataError):
    """An image whose geometry the reader policy refuses (sheared affine, missing or uneven slices, several series)."""


class LandmarkConfigError(LandmarkError, ValueError):
    """A bad setting (config id, command-line argument, plans file, checkpoint that does not match the config).

    ``source`` names the setting or file (e.g. ``--precision`` or ``configs/plans.json``)."""

    def __init__(self, source, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


def first_in_chain(error: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """The first exception of ``kind`` in ``error``'s cause/context chain, else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def bundle_error_in(error: BaseException | None) -> LandmarkError | None:
    """The first :class:`LandmarkError` in ``error``'s cause/context chain (MONAI's config parser wraps them)."""
    return first_in_chain(error, LandmarkError)


def exit_line(error: LandmarkError) -> str:
    """The one line a command prints for ``error``."""
    return f"error: {error}"


def cli_main(function):
    """Decorator for a command's ``main``: a :class:`LandmarkError` becomes one line on stderr and exit status 1."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except LandmarkError as error:
            print(exit_line(error), file=sys.stderr)
            raise SystemExit(1) from None

    return wrapper


def combined_error(source, problems) -> LandmarkDataError:
    """One error for several problems found at once (every problem reported, not the first): the problem itself
    when there is one, else ``<source>: N problems: <first>; <second>; ...`` (one line, each naming its file)."""
    problems = list(problems)
    if len(problems) == 1 and isinstance(problems[0], LandmarkDataError):
        return problems[0]
    return LandmarkDataError(source, f"{len(problems)} problems: " + "; ".join(str(p) for p in problems))


class _OneLineTracebacks(logging.Filter):
    """Drops the traceback of a log record whose exception chain holds a LandmarkError (MONAI's StatsHandler logs
    ``Exception: ...`` with the traceback before re-raising); the record's own line stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and bundle_error_in(record.exc_info[1]) is not None:
            record.exc_info, record.exc_text = None, None
        return True


def _bundle_excepthook(kind, value, traceback, fallback=sys.__excepthook__):
    error = bundle_error_in(value)
    if error is None and first_in_chain(value, TypeError) is not None:  # e.g. "$@bundle_root + '/models'" with python-fire's int 2024
        from scripts.cli_args import fire_converted_path

        error = fire_converted_path()
    if error is None:
        fallback(kind, value, traceback)
        return
    sys.stdout.flush()
    print(exit_line(error), file=sys.stderr, flush=True)


def bundle_command_running() -> bool:
    """Whether this process is a ``python -m monai.bundle ...`` command (also under torchrun), not a server or pytest."""
    main = sys.modules.get("__main__")
    return getattr(getattr(main, "__spec__", None), "name", None) == "monai.bundle.__main__"


def install_bundle_hook() -> None:
    """Make ``python -m monai.bundle run`` end on a :class:`LandmarkError` with its one line and exit status 1.

    MONAI's config parser wraps an exception raised while it evaluates an expression or instantiates a component in
    ``RuntimeError("Failed to ...")`` chains, which Python would print as a long traceback. The configs call this as
    the first step of ``initialize``: it replaces ``sys.excepthook`` with one that finds the LandmarkError in the
    chain (:func:`bundle_error_in`) and prints ``error: <file>: <problem>`` to stderr (Python then exits with 1),
    and strips the traceback from log records about such an error. Every other exception keeps Python's traceback.
    Idempotent; servers and tests never call it, and see the exceptions themselves.

    In a bundle command it then refuses a command-line option that names no id of the configs
    (:func:`scripts.cli_args.unknown_command_line_id`: ``--inputs`` for ``--input`` would otherwise run on the
    default input and exit 0), raising that LandmarkConfigError."""
    if getattr(sys.excepthook, "__name__", "") != _bundle_excepthook.__name__:
        sys.excepthook = functools.partial(_bundle_excepthook, fallback=sys.excepthook)
        functools.update_wrapper(sys.excepthook, _bundle_excepthook)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _OneLineTracebacks) for f in handler.filters):
            handler.addFilter(_OneLineTracebacks())
    if bundle_command_running():
        from scripts.cli_args import unknown_command_line_id

        error = unknown_command_line_id()
        if error is not None:
            raise error
