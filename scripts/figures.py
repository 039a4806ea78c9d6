"""``<stem>_landmarks.png``: three orthogonal slices through each predicted landmark, the point drawn.

Drawn from the preprocessed image (RAS-oriented, at the planned spacing), where the predicted
voxel positions live, so no resampling is needed: the subject's right is on the right of the axial and
coronal slices (neurological convention, noted on the figure), anterior on the right of the sagittal ones,
anterior / superior up. Landmarks reported as not found are drawn in red.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from monai.transforms import Transform

from scripts.cli_args import path_argument
from scripts.atomic import atomic_write_bytes
from scripts.geometry import covariance_to_voxel, voxel_spacing
from scripts.outputs import case_outputs_or_nothing
from scripts.transforms import affine_of


def _slices(volume: np.ndarray, voxel: np.ndarray):
    """(axial, coronal, sagittal) slices through voxel, each oriented with anterior/superior up."""
    i, j, k = (int(np.clip(round(v), 0, n - 1)) for v, n in zip(voxel, volume.shape))
    return (
        (volume[:, :, k].T, (voxel[0], voxel[1])),
        (volume[:, j, :].T, (voxel[0], voxel[2])),
        (volume[i, :, :].T, (voxel[1], voxel[2])),
    )


def _ellipse(ax, centre, covariance_2d: np.ndarray, scale: float, colour: str) -> None:
    """The ellipse {x: x^T C^-1 x = scale^2} of a 2x2 covariance (in the axes' data units), around centre."""
    from matplotlib.patches import Ellipse

    values, vectors = np.linalg.eigh(covariance_2d)
    if not np.all(np.isfinite(values)) or values.min() <= 0:
        return
    angle = float(np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1])))
    width, height = 2 * scale * np.sqrt(values[1]), 2 * scale * np.sqrt(values[0])
    ax.add_patch(Ellipse(centre, width, height, angle=angle, fill=False, color=colour, linewidth=0.9))


PLANES = ((0, 1), (0, 2), (1, 2))  # voxel axes shown by the axial, coronal and sagittal slices
TILE_PIXELS = 120  # a slice is subsampled to at most this many pixels a side
GAP, LABEL_BAND, TITLE_BAND, DPI = 3, 14, 22, 70
# the slices are drawn in the RAS grid as they are: subject's right on screen right (neurological convention; Slicer's
# default views show it on the left), so the figure says so
ORIENTATION_NOTE = "axial, coronal, sagittal: subject's R on the right (sagittal: A on the right); A / S up"


def landmark_figure(volume: np.ndarray, voxels: np.ndarray, names: Sequence[str], scores: Sequence[float], found: Sequence[bool],
                    title: str = "", columns: int = 4, covariances: np.ndarray | None = None, radii: np.ndarray | None = None,
                    flagged: Sequence[bool] | None = None) -> bytes:
    """PNG bytes of a grid: per landmark an (axial, coronal, sagittal) strip with its name and score.

    With ``covariances`` (voxel^2, in the volume's grid) each point gets its uncertainty ellipse: the heatmap's
    covariance scaled to the calibrated radius when ``radii`` (voxels) are given, else its 1-sigma ellipse.
    ``flagged`` landmarks (configuration check) are drawn in orange with a "!".

    All slices go into one mosaic image drawn by one axes, one figure pixel per mosaic pixel: a grid of
    3 x 32 matplotlib axes spent most of its time building and laying out axes (~3x slower)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    voxels = np.asarray(voxels, dtype=np.float64)
    stride = max(1, int(np.ceil(max(volume.shape) / TILE_PIXELS)))
    tile = int(np.ceil(max(volume.shape) / stride))
    rows = int(np.ceil(len(names) / columns))
    cell_w, cell_h = tile + GAP, tile + LABEL_BAND
    width, height = 3 * columns * cell_w + GAP, TITLE_BAND + rows * cell_h + GAP
    low, high = np.percentile(volume, [1, 99.5])
    mosaic = np.full((height, width), np.nan, dtype=np.float32)
    placed = []  # per landmark and view: (tile origin x, y in the mosaic, slice height) to map points
    for n in range(len(names)):
        row, column = divmod(n, columns)
        views = []
        for v, (plane, _) in enumerate(_slices(volume, voxels[n])):
            shown = plane[::stride, ::stride][::-1]  # row 0 at the top: anterior/superior up, as with origin="lower"
            x0 = GAP + (3 * column + v) * cell_w + (tile - shown.shape[1]) // 2
            y0 = TITLE_BAND + row * cell_h + LABEL_BAND + (tile - shown.shape[0]) // 2
            mosaic[y0 : y0 + shown.shape[0], x0 : x0 + shown.shape[1]] = np.clip((shown - low) / max(high - low, 1e-12), 0, 1)
            views.append((x0, y0, shown.shape[0]))
        placed.append(views)
    figure = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = figure.add_axes((0, 0, 1, 1))
    ax.axis("off")
    cmap = plt.get_cmap("gray").with_extremes(bad="white")
    ax.imshow(np.ma.masked_invalid(mosaic), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    flip = np.diag([1.0, -1.0])  # the mosaic's y runs down
    for n, name in enumerate(names):
        warn = flagged is not None and bool(flagged[n])
        colour = "orange" if warn else ("lime" if found[n] else "red")
        scale = 1.0
        if covariances is not None and radii is not None and np.isfinite(radii[n]):
            rms = np.sqrt(np.trace(covariances[n]) / 3.0)
            scale = radii[n] / rms if rms > 0 else 1.0
        for v, ((x0, y0, rows_shown), (a, b)) in enumerate(zip(placed[n], PLANES)):
            centre = (x0 + voxels[n][a] / stride, y0 + rows_shown - 1 - voxels[n][b] / stride)
            ax.plot(*centre, marker="+", color=colour, markersize=9, markeredgewidth=1.5)
            if covariances is not None and np.all(np.isfinite(covariances[n])):
                planar = np.asarray(covariances[n])[np.ix_([a, b], [a, b])] / stride**2
                _ellipse(ax, centre, flip @ planar @ flip, scale, colour)
        label = f"{'! ' if warn else ''}{name} {scores[n]:.2f}"
        if radii is not None and np.isfinite(radii[n]):
            label += f" r{radii[n]:.1f}"
        row_top = TITLE_BAND + (n // columns) * cell_h
        ax.text(GAP + 3 * (n % columns) * cell_w, row_top + LABEL_BAND - 3, label, fontsize=8, va="bottom", ha="left",
                color="darkorange" if warn else ("black" if found[n] else "red"))
    ax.text(width / 2, TITLE_BAND - 5, title, fontsize=10, ha="center", va="bottom")
    ax.text(width - GAP, TITLE_BAND - 5, ORIENTATION_NOTE, fontsize=7, ha="right", va="bottom", color="dimgray")
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    from io import BytesIO

    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    return buffer.getvalue()


class WriteLandmarkFigured(Transform):
    """Postprocessing step before WriteLandmarksd: ``<stem>_landmarks.png`` beside the landmark files.

    It runs first so that ``<stem>.json``, which marks a finished case, is the case's last file."""

    def __init__(self, output_dir: str, landmark_names: Sequence[str], enabled: bool = True):
        self.output_dir = path_argument(output_dir, "output_dir")
        self.landmark_names = list(landmark_names)
        self.enabled = enabled

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if not self.enabled:
            return d
        volume = np.asarray(d["image"][0].detach().cpu().numpy() if hasattr(d["image"], "detach") else d["image"][0], dtype=np.float32)
        stem = d.get("stem") or "case"
        covariances = radii = flagged = None
        if "pred_covariance_mm2" in d:  # world mm^2 -> this grid's voxel^2; radius mm -> voxels (mean spacing)
            covariances = covariance_to_voxel(affine_of(d["image"]), np.nan_to_num(np.asarray(d["pred_covariance_mm2"], dtype=np.float64)))
            spacing = float(np.mean(voxel_spacing(affine_of(d["image"]))))
            radii = np.asarray(d["pred_radius_mm"], dtype=np.float64) / spacing
            flagged = d.get("pred_flagged")
        png = landmark_figure(volume, d["pred_landmarks"], self.landmark_names, d["pred_scores"], d["pred_found"], title=stem,
                              covariances=covariances, radii=radii, flagged=flagged)
        path = os.path.join(self.output_dir, f"{stem}_landmarks.png")
        with case_outputs_or_nothing(path, d.get("output_files", [])):
            atomic_write_bytes(path, png)
        d["output_files"] = [*d.get("output_files", []), path]
        return d
