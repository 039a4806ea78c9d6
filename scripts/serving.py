"""In-process landmark prediction for servers (MONAI Label): the bundle's own inference.json, loaded once.

``LandmarkPredictor`` parses the bundle's inference config (same preprocessing, models, ensemble, TTA,
cascade and extraction as ``python -m monai.bundle run --config_file configs/inference.json``), so a
server's answer equals the command line's. ``write_landmark_label`` draws a small sphere per landmark
into a label image on the input image's own grid, for viewers that show segmentations (3D Slicer).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from monai.bundle import ConfigParser

from scripts.errors import LandmarkDataError, LandmarkError, bundle_error_in
from scripts.geometry import ras_affine
from scripts.image_io import image_geometry
from scripts.atomic import atomic_write_bytes
from scripts.model_files import load_configured_weights
from scripts.outputs import landmark_record


class LandmarkPredictor:
    def __init__(self, bundle_root: str, overrides: Mapping | None = None):
        self.bundle_root = os.path.abspath(bundle_root)
        parser = ConfigParser()
        parser.read_config(os.path.join(self.bundle_root, "configs", "inference.json"))
        parser.update({"bundle_root": self.bundle_root, **dict(overrides or {})})
        self.parser = parser
        self.landmark_names = list(parser.get_parsed_content("landmark_names"))
        self.descriptions = dict(parser.get_parsed_content("landmark_descriptions"))
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.network = parser.get_parsed_content("network")
        load_configured_weights(parser.get_parsed_content("handlers"))  # the single model's CheckpointLoader
        self.inferer = parser.get_parsed_content("inferer")
        self.extract = parser.get_parsed_content("postprocessing").transforms[0]  # ExtractLandmarksd
        self.device = parser.get_parsed_content("device")
        self._lock = threading.Lock()  # one inference at a time: the network is shared

    def predict(self, image_path: str) -> dict:
        """The ``<stem>.json`` record for one image (world RAS mm, input voxel, score, found per landmark).

        Bad input raises LandmarkDataError naming the file."""
        try:
            data = self.preprocessing({"image": image_path})
        except LandmarkError:
            raise
        except Exception as error:  # MONAI wraps reader errors in RuntimeError chains
            ours = bundle_error_in(error)
            if ours is not None:
                raise ours from None
            cause = error
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise LandmarkDataError(image_path, str(cause).splitlines()[0] if str(cause) else type(cause).__name__) from None
        with self._lock, torch.inference_mode():
            heatmaps = self.inferer(data["image"][None].to(self.device), self.network)[0]
        data["pred"] = heatmaps.cpu()
        data = self.extract(data)
        return landmark_record(image_path, self.landmark_names, data, self.descriptions)


def write_landmark_label(image_path: str, record: Mapping, output_path: str, radius_mm: float = 2.0,
                         landmark_names: Sequence[str] | None = None) -> dict[str, int]:
    """A label image on ``image_path``'s grid: a sphere of ``radius_mm`` (at least the voxel under the point)
    per found landmark, label = landmark index + 1. Returns {name: label}; written atomically.

    ``image_path`` is read under the reader policy (scripts.image_io.image_geometry), so a DICOM series
    folder gets its label on the series' grid; what the policy refuses raises LandmarkDataError."""
    reader = image_geometry(image_path)
    size = np.asarray(reader.GetSize()[:3])
    spacing = np.asarray(reader.GetSpacing()[:3])
    names = list(landmark_names or record["landmarks"])
    label = np.zeros(size[::-1], dtype=np.uint8 if len(names) < 255 else np.uint16)  # numpy order is (z, y, x)
    origin = np.asarray(reader.GetOrigin()[:3])
    index_to_mm = ras_affine(reader.GetDirection()[:9], spacing, origin)[:3, :3]
    for value, name in enumerate(names, start=1):
        entry = record["landmarks"].get(name)
        if not entry or not entry.get("found", True):
            continue
        centre = np.asarray(entry["voxel"], dtype=np.float64)  # float (i, j, k) in the image as read
        reach = np.ceil(radius_mm / spacing).astype(int) + 1
        lo = np.clip(np.floor(centre).astype(int) - reach, 0, size - 1)
        hi = np.clip(np.ceil(centre).astype(int) + reach, 0, size - 1)
        grid = np.stack(np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(lo, hi)], indexing="ij"), axis=-1)
        offsets_mm = (grid - centre) @ index_to_mm.T
        inside = np.linalg.norm(offsets_mm, axis=-1) <= radius_mm
        nearest = np.clip(np.round(centre).astype(int), 0, size - 1) - lo
        inside[tuple(nearest)] = True
        block = label[lo[2] : hi[2] + 1, lo[1] : hi[1] + 1, lo[0] : hi[0] + 1]
        block[np.transpose(inside, (2, 1, 0))] = value
    image = sitk.GetImageFromArray(label)
    image.SetSpacing(tuple(spacing))
    image.SetOrigin(tuple(origin))
    image.SetDirection(reader.GetDirection())
    suffix = ".nii.gz" if str(output_path).endswith(".nii.gz") else os.path.splitext(str(output_path))[1]
    scratch = f"{output_path}.writing{suffix}"
    try:
        sitk.WriteImage(image, scratch, True)
        with open(scratch, "rb") as f:
            atomic_write_bytes(output_path, f.read())
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)
    return {name: value for value, name in enumerate(names, start=1)}
