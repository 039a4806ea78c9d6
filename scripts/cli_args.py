"""The bundle command line: path arguments stay paths, whatever they look like; switches read true/false; an
option that names no config id is refused (:func:`unknown_command_line_id`).

``python -m monai.bundle run`` parses its arguments with python-fire, which turns text that reads as a
Python literal into that literal before the config sees it: ``--input 2024`` arrives as the int 2024,
``--output_dir 2025_11`` as the int 202511 (underscores are digit separators), ``--output_dir 1e3`` as
the float 1000.0, ``--input 1,2`` as a tuple (python-fire issue 116). ``str()`` alone would silently
write into ``202511``. :func:`path_argument` takes the text as typed from ``sys.argv`` instead when it is
there and python-fire's own parser turns it into exactly the value received; otherwise it stops with one
line naming the argument, the value it became and the quoting that keeps it text.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

from scripts.errors import LandmarkConfigError


def typed_text(name: str, argv: Sequence[str] | None = None) -> str | None:
    """The text typed after ``--name`` (or in ``--name=TEXT``; ``-`` and ``_`` alike, as python-fire takes
    them) in ``argv`` (default ``sys.argv``): the last occurrence, None when absent."""
    argv = list(sys.argv if argv is None else argv)
    flags = {f"--{name}", f"--{name.replace('_', '-')}"}
    found = None
    for index, token in enumerate(argv):
        flag, equals, text = token.partition("=")
        if flag in flags:
            if equals:
                found = text
            elif index + 1 < len(argv):
                found = argv[index + 1]
    return found


def path_argument(value, name: str, argv: Sequence[str] | None = None) -> str | None:
    """``value`` of the setting ``name`` (e.g. ``"output_dir"``) as a path string.

    Strings and path objects pass unchanged (None too). Anything else (python-fire's int, float, tuple...)
    is replaced by the text typed on the command line when python-fire parses that text into ``value``;
    otherwise raises LandmarkConfigError, e.g. ``--output_dir: python-fire read the value as the number
    202511, not as a path; quote it so that it stays text: --output_dir "'2025_11'"``."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    text = typed_text(name, argv)
    if text is not None:
        from fire.parser import DefaultParseValue

        try:
            parsed = DefaultParseValue(text)
        except Exception:  # noqa: BLE001 - any parser failure means: not the text that gave this value
            parsed = None
        if parsed == value and type(parsed) is type(value):
            return text
    what = "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__
    shown = text if text is not None else str(value)
    raise LandmarkConfigError(
        f"--{name}", f"python-fire read the value as the {what} {value!r}, not as a path; quote it so that it stays text: "
        f"--{name} \"'{shown}'\"")


def parse_switch(value, name: str) -> bool:
    """A config switch given as a bool or, from the command line, as text (fire passes ``--tta false`` as 'false')."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "none", ""):
        return False
    raise LandmarkConfigError(f"--{name} {value!r}", "use true or false")


# the config ids that hold paths; a user may override any of them on the bundle command line
PATH_IDS = ("bundle_root", "ckpt_dir", "dataset_dir", "output_dir", "input", "datalist", "pretrained", "plans_file")


def fire_converted_path(argv: Sequence[str] | None = None) -> LandmarkConfigError | None:
    """The first path id typed on the command line (``argv``, default ``sys.argv``) that python-fire turns into
    something other than text (``--bundle_root 2024`` -> the int 2024), as the one-line error that names it and the
    quoting that keeps it text; None when every typed path stays text.

    For consumers that do not take their path through :func:`path_argument` (e.g. ``$@bundle_root + '/models'``):
    the bundle hook (scripts.errors) prints this line instead of the TypeError traceback such a value causes."""
    from fire.parser import DefaultParseValue

    for name in PATH_IDS:
        text = typed_text(name, argv)
        if text is None:
            continue
        try:
            value = DefaultParseValue(text)
        except Exception:  # noqa: BLE001 - python-fire keeps unparseable text as text
            continue
        if not isinstance(value, str):
            what = "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__
            return LandmarkConfigError(
                f"--{name}", f"python-fire read the value as the {what} {value!r}, not as a path; quote it so that it stays "
                f"text: --{name} \"'{text}'\"")
    return None


def typed_ids(argv: Sequence[str]) -> list[str]:
    """The option names typed in a ``python -m monai.bundle run ...`` command line (``argv`` without the program),
    as python-fire passes them on as keywords: a token that starts with ``--`` or with ``-`` and a letter, its
    leading dashes stripped, up to any ``=``, other dashes read as underscores (``--input x``, ``--input=x``,
    ``-input x`` and ``--in-put x`` all give ``input``; ``-1`` is a value). Tokens after a bare ``--`` are
    python-fire's own flags (``-- --verbose``), not options."""
    names = []
    for token in argv:
        if token == "--":
            break
        if token.startswith("--") and len(token) > 2 or re.match(r"^-[A-Za-z]", token):
            names.append(token.lstrip("-").partition("=")[0].replace("-", "_"))
    return names


def unknown_command_line_id(argv: Sequence[str] | None = None) -> LandmarkConfigError | None:
    """The first option of a ``python -m monai.bundle run`` command line that names neither an id of the configs it
    runs nor a keyword that ``monai.bundle.run`` or the workflow it creates takes, as a one-line error with the
    closest known id; None when every option is known, or when the command is not ``run`` with readable
    ``--config_file`` files typed on the command line (an ``--args_file`` that names them is not checked).

    ``monai.bundle run`` takes any ``--key value`` as an override and adds an unknown key as a new config id, so
    ``--inputs scan.nii.gz`` would run on the default input and exit 0. An id with ``#`` (or MONAI's other
    separator ``::``) is checked by its first part: a new nested id below a known one (``--train#handlers#0#...``)
    stays allowed. ``--_meta_#...`` and, with ``--tracking``, the tracking settings MONAI documents are known.
    ``argv`` defaults to ``sys.argv[1:]``; relative config paths are read from the working directory, as MONAI
    reads them."""
    import ast
    import difflib
    import inspect

    from monai.bundle import ConfigParser
    from monai.bundle.scripts import run
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS
    from monai.bundle.workflows import ConfigWorkflow

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "run":
        return None
    files = typed_text("config_file", ["", *argv])
    if files is None:
        return None
    try:
        files = ast.literal_eval(files) if files.lstrip().startswith(("[", "(")) else files
        config = ConfigParser.load_config_files(files)
    except Exception:  # noqa: BLE001 - an unreadable config file is MONAI's to report, with its own message
        return None
    keywords = (set(inspect.signature(run).parameters) | set(inspect.signature(ConfigWorkflow.__init__).parameters)) - {"self", "override"}
    known = set(config) | keywords | {"workflow_name", ConfigParser.meta_key}
    names = typed_ids(argv[1:])
    if "tracking" in names:
        known |= {key for setting in DEFAULT_EXP_MGMT_SETTINGS.values() for key in setting.get("configs", {})}
    shown = ", ".join(files) if isinstance(files, (list, tuple)) else files
    for name in names:
        root = name.replace("::", "#").split("#")[0]
        if root in known:
            continue
        close = difflib.get_close_matches(root, sorted(known), n=1)
        hint = f" (did you mean --{close[0]}?)" if close else ""
        return LandmarkConfigError(f"--{name}", f"no such option: no id '{root}' in {shown}{hint}")
    return None
