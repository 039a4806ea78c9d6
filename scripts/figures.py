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


def _slices(volume: np.ndarray, voxel: np.ndarray):
    """(axial, coronal, sagittal) slices through voxel, each oriented with anterior/superior up."""
    i, j, k = (int(np.clip(round(v), 0, n - 1)) for v, n in zip(voxel, volume.shape))
    return (
        (volume[:, :, k].T, (voxel[0], voxel[1])),
        (volume[:, j, :].T, (voxel[0], voxel[2])),
        (volume[i, :, :].T, (voxel[1], voxel[2])),
    )


def landmark_figure(volume: np.ndarray, voxels: np.ndarray, names: Sequence[str], scores: Sequence[float], found: Sequence[bool],
                    title: str = "", columns: int = 4) -> bytes:
    """PNG bytes of a grid: per landmark an (axial, coronal, sagittal) strip with its name and score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = int(np.ceil(len(names) / columns))
    figure, axes = plt.subplots(rows, 3 * columns, figsize=(1.6 * 3 * columns, 1.7 * rows), squeeze=False)
    low, high = np.percentile(volume, [1, 99.5])
    for ax in axes.ravel():
        ax.axis("off")
    for n, name in enumerate(names):
        colour = "lime" if found[n] else "red"
        for v, (plane, point) in enumerate(_slices(volume, np.asarray(voxels[n]))):
            ax = axes[n // columns, 3 * (n % columns) + v]
            ax.imshow(plane, cmap="gray", origin="lower", vmin=low, vmax=high, interpolation="nearest")
            ax.plot(point[0], point[1], marker="+", color=colour, markersize=9, markeredgewidth=1.5)
            if v == 0:
                ax.set_title(f"{name} {scores[n]:.2f}", fontsize=8, color="black" if found[n] else "red", loc="left")
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
        png = landmark_figure(volume, d["pred_landmarks"], self.landmark_names, d["pred_scores"], d["pred_found"], title=stem)
        path = os.path.join(self.output_dir, f"{stem}_landmarks.png")
        atomic_write_bytes(path, png)
        return d
