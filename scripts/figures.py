"""``<stem>_landmarks.png``: three orthogonal slices through each predicted landmark, the point drawn.

Drawn from the preprocessed image (RAS-oriented, at the planned spacing), where the predicted
voxel positions live, so no resampling is needed. Landmarks reported as not found are drawn in red.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from monai.transforms import Transform

from scripts.landmark_io import atomic_write_bytes
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
    """The ellipse {x: x^T C^-1 x = scale^2} of a 2x2 voxel covariance, around centre."""
    from matplotlib.patches import Ellipse

    values, vectors = np.linalg.eigh(covariance_2d)
    if not np.all(np.isfinite(values)) or values.min() <= 0:
        return
    angle = float(np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1])))
    width, height = 2 * scale * np.sqrt(values[1]), 2 * scale * np.sqrt(values[0])
    ax.add_patch(Ellipse(centre, width, height, angle=angle, fill=False, color=colour, linewidth=0.9))


PLANES = ((0, 1), (0, 2), (1, 2))  # voxel axes shown by the axial, coronal and sagittal slices


def landmark_figure(volume: np.ndarray, voxels: np.ndarray, names: Sequence[str], scores: Sequence[float], found: Sequence[bool],
                    title: str = "", columns: int = 4, covariances: np.ndarray | None = None, radii: np.ndarray | None = None,
                    flagged: Sequence[bool] | None = None) -> bytes:
    """PNG bytes of a grid: per landmark an (axial, coronal, sagittal) strip with its name and score.

    With ``covariances`` (voxel^2, in the volume's grid) each point gets its uncertainty ellipse: the heatmap's
    covariance scaled to the calibrated radius when ``radii`` (voxels) are given, else its 1-sigma ellipse.
    ``flagged`` landmarks (configuration check) are drawn in orange with a "!"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = int(np.ceil(len(names) / columns))
    figure, axes = plt.subplots(rows, 3 * columns, figsize=(1.6 * 3 * columns, 1.7 * rows), squeeze=False)
    low, high = np.percentile(volume, [1, 99.5])
    for ax in axes.ravel():
        ax.axis("off")
    for n, name in enumerate(names):
        warn = flagged is not None and bool(flagged[n])
        colour = "orange" if warn else ("lime" if found[n] else "red")
        scale = 1.0
        if covariances is not None and radii is not None and np.isfinite(radii[n]):
            rms = np.sqrt(np.trace(covariances[n]) / 3.0)
            scale = radii[n] / rms if rms > 0 else 1.0
        for v, (plane, point) in enumerate(_slices(volume, np.asarray(voxels[n]))):
            ax = axes[n // columns, 3 * (n % columns) + v]
            ax.imshow(plane, cmap="gray", origin="lower", vmin=low, vmax=high, interpolation="nearest")
            ax.plot(point[0], point[1], marker="+", color=colour, markersize=9, markeredgewidth=1.5)
            if covariances is not None and np.all(np.isfinite(covariances[n])):
                a, b = PLANES[v]
                _ellipse(ax, point, np.asarray(covariances[n])[np.ix_([a, b], [a, b])], scale, colour)
            if v == 0:
                label = f"{'! ' if warn else ''}{name} {scores[n]:.2f}"
                if radii is not None and np.isfinite(radii[n]):
                    label += f" r{radii[n]:.1f}"
                ax.set_title(label, fontsize=8, color="darkorange" if warn else ("black" if found[n] else "red"), loc="left")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    from io import BytesIO

    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=70)
    plt.close(figure)
    return buffer.getvalue()


class WriteLandmarkFigured(Transform):
    """Postprocessing step after WriteLandmarksd: ``<stem>_landmarks.png`` beside the landmark files."""

    def __init__(self, output_dir: str, landmark_names: Sequence[str], enabled: bool = True):
        self.output_dir = output_dir
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
            linear = np.linalg.inv(affine_of(d["image"])[:3, :3])
            covariances = np.einsum("ij,njk,lk->nil", linear, np.nan_to_num(np.asarray(d["pred_covariance_mm2"], dtype=np.float64)), linear)
            spacing = float(np.mean(np.linalg.norm(affine_of(d["image"])[:3, :3], axis=0)))
            radii = np.asarray(d["pred_radius_mm"], dtype=np.float64) / spacing
            flagged = d.get("pred_flagged")
        png = landmark_figure(volume, d["pred_landmarks"], self.landmark_names, d["pred_scores"], d["pred_found"], title=stem,
                              covariances=covariances, radii=radii, flagged=flagged)
        path = os.path.join(self.output_dir, f"{stem}_landmarks.png")
        atomic_write_bytes(path, png)
        return d
