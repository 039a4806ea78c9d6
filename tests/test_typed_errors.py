"""Typed errors (scripts.errors): library code raises LandmarkError subclasses, never SystemExit; each command line
turns them into one line and exit status 1 (``scripts.*`` mains through ``cli_main``, ``python -m monai.bundle run``
through the hook the configs install first thing in ``initialize``)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.errors import GeometryError, LandmarkConfigError, LandmarkDataError, LandmarkError, bundle_error_in, combined_error

PROJECT = Path(__file__).resolve().parent.parent
COMMAND_HELPERS = {"main", "cli_main", "wrapper"}  # a command's main, and the decorator that makes its exit status


def raises_of_system_exit(path: Path):
    """(line, enclosing function) of every ``raise SystemExit`` / ``except SystemExit`` in a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Raise) and child.exc is not None:
                target = child.exc.func if isinstance(child.exc, ast.Call) else child.exc
                if isinstance(target, ast.Name) and target.id == "SystemExit":
                    found.append((child.lineno, function))
            if isinstance(child, ast.ExceptHandler) and child.type is not None and "SystemExit" in ast.unparse(child.type):
                found.append((child.lineno, function))
            visit(child, name)

    visit(tree, "<module>")
    return found


def test_no_system_exit_below_a_main():
    """An AST scan of the library (scripts/, the MONAI Label app) and the bench scripts: SystemExit only in a command's
    main or the CLI helper."""
    offenders = []
    for path in sorted([*PROJECT.glob("scripts/**/*.py"), *PROJECT.glob("monailabel_app/*.py"), *PROJECT.glob("bench/*.py")]):
        for line, function in raises_of_system_exit(path):
            if function not in COMMAND_HELPERS or (function == "wrapper" and path.name != "errors.py"):
                offenders.append(f"{path.relative_to(PROJECT)}:{line} (in {function})")
    assert not offenders, "SystemExit below a main: " + ", ".join(offenders)


def test_hierarchy_and_combined_problems():
    geometry = GeometryError("scan.nii.gz", "sheared affine")
    assert isinstance(geometry, LandmarkDataError) and isinstance(geometry, LandmarkError) and isinstance(geometry, ValueError)
    assert str(LandmarkConfigError("--precision", "'half' is not a precision")) == "--precision: 'half' is not a precision"
    one = LandmarkDataError("a.nii.gz", "cannot read image")
    assert combined_error("training cases", [one]) is one
    both = combined_error("training cases", [one, LandmarkDataError("b.fcsv", "duplicate landmark name 'AC'")])
    assert str(both) == "training cases: 2 problems: a.nii.gz: cannot read image; b.fcsv: duplicate landmark name 'AC'"
    try:  # MONAI's config parser wraps what a component raises
        try:
            raise one
        except LandmarkDataError as error:
            raise RuntimeError("Failed to instantiate component 'scripts.data.resolve_inputs'") from error
    except RuntimeError as wrapped:
        assert bundle_error_in(wrapped) is one
    assert bundle_error_in(RuntimeError("unrelated")) is None


def run_python(*args, cwd=PROJECT, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_bundle_hook_prints_one_line_and_keeps_other_tracebacks():
    """The hook as monai.bundle run has it: a wrapped LandmarkError -> its line, exit 1; a log record about it loses its
    traceback; any other exception keeps Python's traceback."""
    code = ("import logging, sys\nlogging.basicConfig(stream=sys.stdout)\nimport scripts.errors as e\ne.install_bundle_hook()\n"
            "try:\n    raise e.LandmarkDataError('scan.nii.gz', 'cannot read image')\n"
            "except e.LandmarkError as err:\n    logging.getLogger('x').exception('Exception: %s', err)\n"
            "    raise RuntimeError('Failed to evaluate') from err\n")
    result = run_python("-c", code)
    assert result.returncode == 1
    assert result.stderr == "error: scan.nii.gz: cannot read image\n"
    assert result.stdout.strip() == "ERROR:x:Exception: scan.nii.gz: cannot read image"
    other = run_python("-c", "import scripts.errors as e\ne.install_bundle_hook()\nraise KeyError('plain')")
    assert other.returncode == 1 and "Traceback" in other.stderr and "KeyError: 'plain'" in other.stderr


def test_bundle_run_bad_input_is_one_line_and_exit_1(tmp_path):
    """A real ``python -m monai.bundle run`` of the shipped inference config on a missing scan."""
    missing = tmp_path / "nowhere.nii.gz"
    result = run_python("-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--input", missing,
                        "--output_dir", tmp_path / "out")
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == f"error: {missing}: no such file or folder"


@pytest.mark.parametrize("command, expected", [
    (["-m", "scripts.train_folds", "--bundle_root", "{tmp}"], "error: {tmp}/configs/plans.json: no plans; run"),
    (["-m", "scripts.package", "--bundle_root", "{tmp}", "--output_dir", "{tmp}/dist"], "error: {tmp}/large_files.yml: missing"),
])
def test_script_mains_print_one_line_and_exit_1(tmp_path, command, expected):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps({"name": "x", "version": "0.1.0"}))
    result = run_python(*[part.format(tmp=tmp_path) for part in command])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected.format(tmp=tmp_path)), result.stderr
