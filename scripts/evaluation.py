"""evaluate.json's report: metrics.json (overall, per landmark, per case) and per_case.csv.

per_case.csv has one row per case and landmark: radial error (mm), peak score, found, predicted and true
positions (RAS mm) and, after a cascade, ``coarse_error_mm``: the coarse stage's own radial error (empty
without a cascade or an annotation), to check it against the fine search radius (bench/afids_accuracy.py).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Sequence

import numpy as np
from ignite.engine import Events

from scripts.cli_args import path_argument
from scripts.atomic import atomic_write_text
from scripts.metrics import _to_numpy, case_items, per_landmark_summary, radial_errors, summarize_errors

logger = logging.getLogger(__name__)


class LandmarkEvaluationReport:
    """Collects each case's radial errors and writes the report when the evaluator completes.

    Every annotated landmark counts, found or not: a prediction is never dropped to improve a metric.
    """

    def __init__(self, output_dir: str, landmark_names: Sequence[str]):
        self.output_dir = path_argument(output_dir, "output_dir")
        self.landmark_names = list(landmark_names)
        self.cases: list[dict] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.cases.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine) -> None:
        for item in case_items(engine.state):
            if "pred_landmarks_world" not in item:
                continue
            pred = _to_numpy(item["pred_landmarks_world"])
            gt = _to_numpy(item["landmarks_world"])
            self.cases.append(
                {
                    "case": str(item.get("stem", len(self.cases))),
                    "pred": pred,
                    "gt": gt,
                    "errors": radial_errors(pred, gt),
                    "scores": _to_numpy(item["pred_scores"]),
                    "found": np.asarray(item["pred_found"], dtype=bool),
                    # the cascade's coarse stage alone (NaN without a cascade): is the truth within the fine search radius?
                    "coarse_errors": radial_errors(_to_numpy(item["pred_coarse_landmarks_world"]), gt)
                    if "pred_coarse_landmarks_world" in item else np.full(len(gt), np.nan),
                }
            )

    def metrics(self) -> dict:
        errors = np.stack([c["errors"] for c in self.cases]) if self.cases else np.zeros((0, len(self.landmark_names)))
        return {
            "units": "mm",
            "cases": len(self.cases),
            "overall": summarize_errors(errors),
            "per_landmark": per_landmark_summary(errors, self.landmark_names) if self.cases else {},
            "per_case": {c["case"]: summarize_errors(c["errors"]) for c in self.cases},
        }

    def per_case_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["case", "landmark", "error_mm", "score", "found", "pred_x", "pred_y", "pred_z", "true_x", "true_y", "true_z",
                         "coarse_error_mm"])
        for c in self.cases:
            for i, name in enumerate(self.landmark_names):
                error = c["errors"][i]
                writer.writerow(
                    [c["case"], name, "" if not np.isfinite(error) else round(float(error), 4), round(float(c["scores"][i]), 4), bool(c["found"][i])]
                    + [round(float(v), 4) for v in c["pred"][i]]
                    + ["" if not np.isfinite(v) else round(float(v), 4) for v in c["gt"][i]]
                    + ["" if not np.isfinite(c["coarse_errors"][i]) else round(float(c["coarse_errors"][i]), 4)]
                )
        return buffer.getvalue()

    def write(self, engine=None) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        metrics = self.metrics()
        atomic_write_text(os.path.join(self.output_dir, "metrics.json"), json.dumps(_jsonable(metrics), indent=2) + "\n")
        atomic_write_text(os.path.join(self.output_dir, "per_case.csv"), self.per_case_csv())
        overall = metrics["overall"]
        logger.info(
            "evaluated %d case(s), %d landmarks: MRE %.3f mm, median %.3f mm, SDR@2/3/4 mm %.3f/%.3f/%.3f -> %s",
            metrics["cases"], overall["n"], overall["mre"], overall["median"],
            overall["sdr_2mm"], overall["sdr_3mm"], overall["sdr_4mm"], self.output_dir,
        )


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
