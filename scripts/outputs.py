"""Per-case landmark files (DESIGN §3) and the run summary for a folder or datalist."""

from __future__ import annotations

import contextlib
import csv
import html
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
from ignite.engine import Events
from monai.transforms import Transform

from scripts.cli_args import path_argument
from scripts.errors import LandmarkConfigError, LandmarkDataError
from scripts.atomic import atomic_write_text
from scripts.landmark_io import write_landmarks
from scripts.metrics import case_items

logger = logging.getLogger(__name__)


def _as_list(values) -> list:
    return np.asarray(values, dtype=np.float64).round(4).tolist()


def landmark_record(image: str, names: Sequence[str], data: Mapping, descriptions: Mapping[str, str] | None = None) -> dict:
    world = np.asarray(data["pred_landmarks_world"], dtype=np.float64)
    voxel = np.asarray(data["pred_landmarks_input_voxel"], dtype=np.float64)
    scores = np.asarray(data["pred_scores"], dtype=np.float64)
    found = np.asarray(data["pred_found"], dtype=bool)
    landmarks = {}
    for i, name in enumerate(names):
        landmarks[name] = {
            "position": _as_list(world[i]),
            "voxel": _as_list(voxel[i]),
            "score": round(float(scores[i]), 4),
            "found": bool(found[i]),
        }
        if descriptions and descriptions.get(name):
            landmarks[name]["description"] = descriptions[name]
        if "pred_covariance_mm2" in data:
            landmarks[name]["uncertainty"] = _uncertainty(data, i)
            landmarks[name]["flags"] = ["configuration"] if np.asarray(data["pred_flagged"])[i] else []
    return {"image": image, "coordinate_system": "RAS", "units": "mm", "landmarks": landmarks}


def _uncertainty(data: Mapping, i: int) -> dict:
    """radius_mm (calibrated, null before calibration), its coverage, and the heatmap's world covariance."""
    covariance = np.asarray(data["pred_covariance_mm2"], dtype=np.float64)[i]
    radius = float(np.asarray(data["pred_radius_mm"], dtype=np.float64)[i])
    return {
        "radius_mm": round(radius, 3) if np.isfinite(radius) else None,
        "coverage": data.get("pred_coverage"),
        "covariance_mm2": _as_list(covariance) if np.all(np.isfinite(covariance)) else None,
    }


class WriteLandmarksd(Transform):
    """Write ``<stem>.json``, ``<stem>.fcsv`` and ``<stem>.mrk.json`` into output_dir (atomic writes)."""

    def __init__(self, output_dir: str, landmark_names: Sequence[str], descriptions: Mapping[str, str] | None = None, formats: Sequence[str] = (".json", ".fcsv", ".mrk.json")):
        self.output_dir = path_argument(output_dir, "output_dir")
        self.landmark_names = list(landmark_names)
        self.descriptions = dict(descriptions or {})
        self.formats = list(formats)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = str(d.get("image_path") or d["image"].meta.get("filename_or_obj", ""))
        stem = d.get("stem") or os.path.basename(image)
        base = os.path.join(self.output_dir, stem)
        record = landmark_record(image, self.landmark_names, d, self.descriptions)
        positions = {name: value["position"] for name, value in record["landmarks"].items()}
        # .json last: a rerun without --overwrite treats a case whose .json exists as finished
        written = list(d.get("output_files", []))  # this case's files from earlier steps (the PNG)
        for suffix in sorted(self.formats, key=lambda s: s == ".json"):
            with case_outputs_or_nothing(base + suffix, written):
                os.makedirs(os.path.dirname(base), exist_ok=True)
                if suffix == ".json":
                    atomic_write_text(base + ".json", json.dumps(record, indent=2) + "\n")
                else:
                    write_landmarks(base + suffix, positions, self.descriptions)
            written.append(base + suffix)
        d["output_files"] = written
        return d


@contextlib.contextmanager
def case_outputs_or_nothing(path: str, written: Sequence[str]):
    """Write one of a case's files; if that fails (disk full, permissions), remove the case's files written
    before it and stop the run with one line. Each write is atomic, so nothing partial is left of ``path``;
    cases finished earlier stay complete."""
    try:
        yield
    except OSError as error:
        for earlier in written:
            with contextlib.suppress(OSError):
                os.remove(earlier)
        raise LandmarkConfigError(path, f"cannot write ({error.strerror or error}); cases written so far are complete") from None


class InferenceSummary:
    """Collects every case's landmarks (or its error) and writes ``summary.csv`` when the run ends.

    ``failures`` lists ``<file>: <problem>`` lines; ``exit_on_failures`` turns them into the exit code.
    """

    def __init__(self, output_dir: str, landmark_names: Sequence[str], print_tables_up_to: int = 3):
        self.output_dir = path_argument(output_dir, "output_dir")
        self.landmark_names = list(landmark_names)
        self.print_tables_up_to = print_tables_up_to
        self.rows: list[list] = []
        self.failures: list[str] = []
        self.flagged: dict[tuple[str, str], bool] = {}
        self.cases = 0

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine) -> None:
        output = engine.state.output
        if isinstance(output, dict) and "error" in output:
            self.failures.extend(output["error"])
            self.cases += len(output["error"])
            return
        for item in case_items(engine.state):
            self.cases += 1
            world, scores, found = item["pred_landmarks_world"], item["pred_scores"], item["pred_found"]
            radius = np.asarray(item.get("pred_radius_mm", np.full(len(world), np.nan)), dtype=np.float64)
            flagged = np.asarray(item.get("pred_flagged", np.zeros(len(world), dtype=bool)), dtype=bool)
            for i, name in enumerate(self.landmark_names):
                x, y, z = (round(float(v), 4) for v in world[i])
                r = round(float(radius[i]), 3) if np.isfinite(radius[i]) else ""
                self.rows.append([item.get("stem", ""), name, x, y, z, round(float(scores[i]), 4), bool(found[i]), r])
                self.flagged[(item.get("stem", ""), name)] = bool(flagged[i])

    def write(self, engine=None) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["case", "landmark", "x", "y", "z", "score", "found", "radius_mm"])
        writer.writerows(self.rows)
        for name, text in (("summary.csv", buffer.getvalue()), ("qa.html", self.qa_page())):
            with case_outputs_or_nothing(os.path.join(self.output_dir, name), ()):
                os.makedirs(self.output_dir, exist_ok=True)
                atomic_write_text(os.path.join(self.output_dir, name), text)
        done = self.cases - len(self.failures)
        if done <= self.print_tables_up_to:
            print(self.tables())
        print(f"landmarks written for {done} of {self.cases} case(s) into {self.output_dir}")
        for line in self.failures:
            print(f"failed: {line}")

    def tables(self) -> str:
        """One table per case: landmark, RAS position (mm), score, found, calibrated radius (when calibrated)."""
        lines, current = [], None
        for case, name, x, y, z, score, found, radius in self.rows:
            if case != current:
                current = case
                lines += ["", case, f"  {'landmark':<10} {'R (mm)':>9} {'A (mm)':>9} {'S (mm)':>9} {'score':>6}  found  radius (mm)"]
            r = f"{radius:>11.1f}" if radius != "" else f"{'-':>11}"
            lines.append(f"  {name:<10} {x:>9.2f} {y:>9.2f} {z:>9.2f} {score:>6.3f}  {'yes' if found else 'NO ':<5}{r}")
        return "\n".join(lines)

    def qa_page(self) -> str:
        """qa.html: per case its landmark figure and a table (name, position, score, radius, flags); landmarks
        flagged by the configuration check or not found are highlighted; failed cases listed first."""
        parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Landmark QA</title><style>",
                 "body{font-family:sans-serif} table{border-collapse:collapse} td,th{padding:2px 8px;border-bottom:1px solid #ddd}",
                 ".flag{background:#ffd9a0} .missing{color:#c00} img{max-width:100%}</style></head><body><h1>Landmark QA</h1>"]
        if self.failures:
            parts.append("<h2>Failed</h2><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in self.failures) + "</ul>")
        current = None
        for case, name, x, y, z, score, found, radius in self.rows:
            if case != current:
                if current is not None:
                    parts.append("</table>")
                current = case
                figure = f"{case}_landmarks.png"
                parts.append(f"<h2>{html.escape(case)}</h2>")
                if os.path.exists(os.path.join(self.output_dir, figure)):
                    parts.append(f"<img src='{html.escape(figure)}' alt='landmarks of {html.escape(case)}'>")
                parts.append("<table><tr><th>landmark</th><th>R</th><th>A</th><th>S</th><th>score</th><th>found</th>"
                             "<th>radius (mm)</th><th>flags</th></tr>")
            flag = self.flagged.get((case, name), False)
            style = " class='flag'" if flag else (" class='missing'" if not found else "")
            parts.append(f"<tr{style}><td>{html.escape(name)}</td><td>{x:.2f}</td><td>{y:.2f}</td><td>{z:.2f}</td><td>{score:.3f}</td>"
                         f"<td>{'yes' if found else 'no'}</td><td>{radius if radius != '' else '-'}</td>"
                         f"<td>{'configuration' if flag else ''}</td></tr>")
        if current is not None:
            parts.append("</table>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    def exit_on_failures(self) -> None:
        """Raise LandmarkDataError when a case failed, so that the command exits non-zero after writing the others."""
        if self.failures:
            raise LandmarkDataError(self.output_dir, f"{len(self.failures)} case(s) failed; see the lines above")
