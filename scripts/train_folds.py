"""Train every cross-validation fold (or seed member) in sequence, each resumable.

    python -m scripts.train_folds [--bundle_root .] [--folds 0 1 2] [--members 5] [-- extra bundle arguments]

Each fold runs the bundle's own command, ``python -m monai.bundle run --config_file configs/train.json
--fold N`` (first with configs/train_coarse.json merged over it when the plans have a cascade), so its models land in
``models/fold_N/`` and an interrupted fold continues from its last saved state when this is run again;
finished folds return at once. With planned folds every fold is trained; a one-subject dataset has no
folds, and ``--members`` seeds (default 5) trained on all of it are the ensemble instead.
Inference averages whatever ``models/fold_*/model.pt`` exist (inference.json ``ensemble``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from scripts.errors import LandmarkConfigError, cli_main

DEFAULT_SEED_MEMBERS = 5


def fold_numbers(plans: dict, requested: list[int] | None, members: int) -> list[int]:
    """The folds to train: those requested (checked against the plans), else all planned, else seed members."""
    planned = len(plans["configuration"].get("folds") or [])
    if requested:
        wrong = [f for f in requested if f < 0 or (planned and f >= planned)]
        if wrong:
            raise LandmarkConfigError("--folds", f"fold(s) {wrong} do not exist: the plans have {planned or 'no'} folds")
        return sorted(set(requested))
    return list(range(planned if planned else members))


def stages(plans: dict) -> list[str]:
    return ["coarse", "fine"] if plans["configuration"].get("cascade") else ["fine"]


def command(bundle_root: Path, fold: int, stage: str, extra: list[str]) -> list[str]:
    files = "['configs/train.json','configs/train_coarse.json']" if stage == "coarse" else "configs/train.json"
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, "--bundle_root", str(bundle_root),
            "--fold", str(fold)] + extra


@cli_main
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m scripts.train_folds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle_root", default=".", type=Path)
    parser.add_argument("--folds", type=int, nargs="*", default=None, help="fold numbers (default: every planned fold)")
    parser.add_argument("--members", type=int, default=DEFAULT_SEED_MEMBERS, help="seed members when the plans have no folds")
    args = parser.parse_args(own)
    bundle_root = args.bundle_root.resolve()
    plans_file = bundle_root / "configs" / "plans.json"
    if not plans_file.is_file():
        raise LandmarkConfigError(plans_file, "no plans; run `python -m scripts.plan DATALIST --bundle_root DIR` first")
    plans = json.loads(plans_file.read_text())
    folds = fold_numbers(plans, args.folds, args.members)
    kind = "folds" if plans["configuration"].get("folds") else "seed members (no folds planned)"
    print(f"training {len(folds)} {kind}: {folds}, stages {stages(plans)}", flush=True)
    rows = []
    for fold in folds:
        for stage in stages(plans):
            print(f"--- fold {fold}, {stage} stage -> models/fold_{fold}/", flush=True)
            started = time.time()
            rc = subprocess.call(command(bundle_root, fold, stage, extra), cwd=bundle_root)
            rows.append((fold, stage, "ok" if rc == 0 else f"failed (exit {rc})", time.time() - started))
            if rc != 0:
                break
    print(f"\n{'fold':>4}  {'stage':<6}  {'result':<18}  {'minutes':>7}")
    for fold, stage, result, seconds in rows:
        print(f"{fold:>4}  {stage:<6}  {result:<18}  {seconds / 60:7.1f}")
    failed = [row for row in rows if row[2] != "ok"]
    if failed:
        print(f"{len(failed)} fold stage(s) failed; rerun the same command to resume", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
