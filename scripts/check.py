"""Check a dataset before anything runs, and report every problem at once.

    python -m scripts.check DATALIST [--plans BUNDLE/configs/plans.json]

Like nnU-Net's dataset integrity check: the datalist's structure against its JSON Schema
(scripts.datalist_schema); every image exists, loads, is 3D single-channel with finite, not all-zero
intensities and a sane spacing; every landmark file parses; every point matches a channel by the one
name resolver (scripts.landmark_names: landmark_names, or with --plans a trained model's channels; without
either, the files are compared with one another); annotations lie inside their own images; each
file's coordinate system is stated or the assumption is named; no image is listed twice. Errors are
fatal (exit 1), warnings are printed and exit 0. The planner and training run the fatal checks too; this
command shows them all before a long run, in one table. The checks themselves live in scripts.data
(``check_dataset``); this module prints them.
"""

from __future__ import annotations

import argparse
import sys

from scripts.data import check_dataset
from scripts.errors import cli_main


@cli_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("datalist")
    parser.add_argument("--plans", default=None, help="a trained bundle's configs/plans.json: landmarks must match its channels")
    args = parser.parse_args(argv)
    problems, counts = check_dataset(args.datalist, args.plans)
    for problem in problems:
        print(problem.line(), file=sys.stderr if problem.severity == "error" else sys.stdout)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    if counts:
        print(f"{args.datalist}: {counts.get('training', 0)} training, {counts.get('validation', 0)} validation, "
              f"{counts.get('testing', 0)} testing cases, {counts.get('landmarks', 0)} landmark names: "
              f"{errors} error(s), {warnings} warning(s)")
    else:
        print(f"{args.datalist}: {errors} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
