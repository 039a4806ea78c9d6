"""Contrast randomisation for training: a model that must find landmarks in MRI contrasts it never saw.

Domain randomisation after SynthSeg (Billot et al., Medical Image Analysis 2023): every training patch may
get new, random intensities per tissue, so that no contrast (T1w, T2w, PD, FLAIR-like, inverted) is the one
the network can rely on; only the shapes of the tissue boundaries stay. These are intensity-only transforms:
no voxel moves, so landmark positions (``landmarks_world``) and the image affine are never touched.

Tissue labels (key ``tissue_labels``, int16, one channel on the image grid) come from two sources:

- a label map given with the case (datalist key ``label``, e.g. FreeSurfer's aseg.mgz): its positive labels
  are tissues (and together the brain mask that skull-strip simulation uses), read through the same reader
  as the image (``scripts.image_io.SimpleITKReader``) and resampled onto the preprocessed image grid with
  nearest neighbour (MONAI ``ResampleToMatch``);
- otherwise, and outside the positive labels of a map: ``intensity_classes`` equal-count intensity bands of
  the image's non-zero voxels (codes -1 .. -K), a coarse tissue map that needs no segmentation and works for
  any template. Voxels that are exactly 0 (background after the non-zero z-score) have code 0.

``RandTissueContrastd`` draws, per label present in the patch, a new mean ~ U(0, 1) and a within-label
contrast ~ U(``std_range``) (SynthSeg's Gaussian mixture: means U(0, 255), standard deviations U(0, 35) on an
8-bit scale), and writes ``mean[L] + std[L] * z`` where z is the voxel's standardised intensity within its
label in the patch (the original texture; SynthSeg uses white noise there, which would erase the sulcal
and ventricular detail a coarse intensity-band map still carries). The patch is then rescaled to its own
former mean and standard deviation, so that the network input keeps the statistics of a z-scored scan.
Blur, bias field, noise and low resolution follow in the training list (MONAI's RandGaussianSmoothd,
RandBiasFieldd, RandGaussianNoised, RandSimulateLowResolutiond). ``RandSkullStripd`` zeroes everything
outside the brain mask when the case has one.

MONAI's RandIntensityRemap (no dictionary version in MONAI 1.6) was measured and not used: it samples its
remapping curve over the image's unique values, so on a float (z-scored) image every voxel is its own level
and the curve is noise that erases the anatomy; it also costs about 260 ms per 60^3 patch against 15-23 ms
for RandTissueContrastd (docs/design_notes.md).

Each random transform separates ``randomize()`` (draws, stored on the instance) from applying them, so a
draw can be replayed: ``t.set_random_state(seed)``, or call ``t.apply(data)`` again after ``t(data)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, RandomizableTransform, ResampleToMatch

from scripts.errors import LandmarkDataError
from scripts.image_io import SimpleITKReader

LABEL_KEY = "label"  # datalist key of an optional label map (path)
TISSUE_KEY = "tissue_labels"
BRAIN_MASK_META = "has_brain_mask"  # meta flag: positive tissue labels come from a label map (a brain mask exists)
INT16 = np.iinfo(np.int16)


def intensity_classes(image: np.ndarray, n_classes: int) -> np.ndarray:
    """Codes -1 .. -n_classes of ``n_classes`` equal-count bands of the non-zero voxels (dark to bright), 0 where the image is 0.

    ``image``: any shape, float. Returns int16 of the same shape. Band edges are the quantiles
    k / n_classes of the non-zero voxels (k = 1 .. n_classes - 1), so each band holds about 1 / n_classes of them.
    """
    codes = np.zeros(image.shape, dtype=np.int16)
    nonzero = image != 0
    if n_classes < 1 or not nonzero.any():
        return codes
    values = image[nonzero]
    edges = np.quantile(values, np.arange(1, n_classes) / n_classes)
    codes[nonzero] = -(np.searchsorted(edges, values, side="right") + 1)
    return codes


class LoadTissueLabelsd(MapTransform):
    """Tissue labels on the (preprocessed) image grid for contrast randomisation; deterministic, so cached.

    Reads the case's label map (``label_key``, a path; optional) with ``SimpleITKReader``, resamples it onto
    ``image``'s current grid (its affine and shape, i.e. after orientation and spacing) with nearest
    neighbour, and writes ``output_key`` (int16 MetaTensor, shape (1, X, Y, Z), meta ``has_brain_mask``).
    Voxels the map leaves at 0 (or every voxel, without a map) get intensity-band codes (see
    ``intensity_classes``). The path under ``label_key`` is removed either way (the batch key ``label`` is
    the heatmap target). With ``enabled`` false only that removal happens.

    Raises LandmarkDataError (naming the file) for a label map that is not one 3D channel, holds negative or
    non-integer labels, or labels beyond int16.
    """

    def __init__(self, image_key: str = "image", label_key: str = LABEL_KEY, output_key: str = TISSUE_KEY,
                 intensity_classes: int = 6, enabled: bool = True):
        super().__init__(keys=[image_key], allow_missing_keys=True)
        self.image_key, self.label_key, self.output_key = image_key, label_key, output_key
        self.n_classes = int(intensity_classes)
        self.enabled = bool(enabled)
        self.loader = LoadImage(reader=SimpleITKReader(), image_only=True, ensure_channel_first=True)

    def read_label_map(self, path: str, image: MetaTensor) -> np.ndarray:
        """The label map at ``path`` on ``image``'s grid, (X, Y, Z) int16."""
        labels = self.loader(path)
        if labels.ndim != 4 or labels.shape[0] != 1:
            raise LandmarkDataError(path, f"a label map must be one 3D image, got shape {tuple(labels.shape)}")
        values = labels.detach().cpu().numpy()
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)) or values.min() < 0 or values.max() > INT16.max:
            raise LandmarkDataError(path, f"a label map must hold integer labels 0..{INT16.max}")
        resampled = ResampleToMatch(mode="nearest", padding_mode="zeros", dtype=np.float32)(labels.float(), image)
        return np.rint(resampled[0].detach().cpu().numpy()).astype(np.int16)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        path = d.pop(self.label_key, None)
        if not self.enabled or self.image_key not in d:
            return d
        image = d[self.image_key]
        array = image[0].detach().cpu().numpy() if torch.is_tensor(image) else np.asarray(image)[0]
        codes = intensity_classes(array, self.n_classes)
        has_map = isinstance(path, str) and bool(path)
        if has_map:
            labels = self.read_label_map(path, image)
            codes = np.where(labels > 0, labels, codes).astype(np.int16)
        affine = image.affine if isinstance(image, MetaTensor) else torch.eye(4, dtype=torch.float64)
        d[self.output_key] = MetaTensor(torch.from_numpy(codes[None]), affine=affine, meta={BRAIN_MASK_META: has_map})
        return d


def _labels_of(d: Mapping, key: str):
    labels = d.get(key)
    return None if labels is None else (labels if torch.is_tensor(labels) else torch.as_tensor(np.asarray(labels)))


class RandTissueContrastd(RandomizableTransform, MapTransform):
    """With probability ``prob``, give every tissue label in the patch a random intensity (SynthSeg-style).

    For each label L present (``label_key``, same grid as the image): mean[L] ~ U(0, 1), std[L] ~ U(std_range);
    voxel value = mean[L] + std[L] * (x - m_L) / s_L, with m_L, s_L the label's mean and standard deviation in
    the patch (s_L = 0 gives a flat label). The result is rescaled to the patch's former mean and standard
    deviation. ``randomize(labels)`` draws for the given sorted label codes and stores them
    (``self.labels``, ``self.means``, ``self.stds``); ``apply(data)`` uses the stored draw. Cases without
    ``label_key`` pass unchanged (no draw). Intensity only: shapes, affines and landmarks are untouched.
    """

    backend = ["torch"]

    def __init__(self, keys: KeysCollection = "image", label_key: str = TISSUE_KEY, prob: float = 0.5,
                 std_range: Sequence[float] = (0.01, 0.1), allow_missing_keys: bool = False):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.label_key = label_key
        self.std_range = (float(std_range[0]), float(std_range[1]))
        self.labels = np.zeros(0, dtype=np.int64)
        self.means = np.zeros(0)
        self.stds = np.zeros(0)

    def randomize(self, labels: Sequence[int]) -> None:
        super().randomize(None)
        self.labels = np.unique(np.asarray(labels, dtype=np.int64))
        if not self._do_transform:
            return
        self.means = self.R.uniform(0.0, 1.0, len(self.labels))
        self.stds = self.R.uniform(*self.std_range, len(self.labels))

    def __call__(self, data: Mapping) -> dict:
        labels = _labels_of(data, self.label_key)
        if labels is None:
            return dict(data)
        self.randomize(present_labels(labels))
        return self.apply(data)

    def apply(self, data: Mapping) -> dict:
        """Apply the stored draw (``randomize``) to ``data``."""
        d = dict(data)
        labels = _labels_of(d, self.label_key)
        if labels is None or not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = self.synthesize(d[key], labels)
        return d

    def synthesize(self, image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(C, X, Y, Z) image, (1, X, Y, Z) labels -> the same image type with the drawn per-label intensities (float32)."""
        codes = torch.as_tensor(labels).reshape(-1).to(torch.int64)
        drawn = torch.as_tensor(self.labels, dtype=torch.int64)
        lowest = int(min(drawn.min(), codes.min())) if len(drawn) and codes.numel() else 0
        lookup = torch.full((int(max(drawn.max(), codes.max())) - lowest + 1 if len(drawn) else 1,), -1, dtype=torch.int64)
        lookup[drawn - lowest] = torch.arange(len(drawn))
        index = lookup[codes - lowest]
        if (index < 0).any():
            raise ValueError("tissue labels in the patch differ from the drawn ones: call randomize() with this patch's labels")
        means = torch.as_tensor(self.means, dtype=torch.float32)
        stds = torch.as_tensor(self.stds, dtype=torch.float32)
        n = len(drawn)
        count = torch.bincount(index, minlength=n).clamp(min=1).to(torch.float64)
        out = []
        for channel in torch.as_tensor(image).detach().reshape(image.shape[0], -1).to(torch.float32):
            label_mean = (torch.bincount(index, weights=channel.double(), minlength=n) / count).float()
            centred = channel - label_mean[index]
            label_std = (torch.bincount(index, weights=centred.double() ** 2, minlength=n) / count).sqrt().float()
            gain = torch.where(label_std > 0, stds / label_std.clamp(min=1e-12), torch.zeros_like(label_std))
            new = means[index] + gain[index] * centred
            spread = new.std(unbiased=False)
            new = (new - new.mean()) * (channel.std(unbiased=False) / spread) + channel.mean() if spread > 0 else channel
            out.append(new)
        result = torch.stack(out).reshape(image.shape)
        if isinstance(image, MetaTensor):
            result = MetaTensor(result)
            result.copy_meta_from(image)  # affine and meta as they were: intensity only
        return result


def present_labels(labels: torch.Tensor) -> list[int]:
    """The sorted label codes present in ``labels`` (a counting pass, no sort of the voxels)."""
    codes = torch.as_tensor(labels).reshape(-1).to(torch.int64)
    if not codes.numel():
        return []
    lowest = int(codes.min())
    return (torch.nonzero(torch.bincount(codes - lowest)).reshape(-1) + lowest).tolist()


class RandSkullStripd(RandomizableTransform, MapTransform):
    """With probability ``prob``, zero the image outside the brain (positive tissue labels), as a
    skull-stripped scan is after its non-zero z-score. Only cases whose labels came from a label map
    (meta ``has_brain_mask``) have a brain mask; others pass unchanged without a draw."""

    def __init__(self, keys: KeysCollection = "image", label_key: str = TISSUE_KEY, prob: float = 0.2,
                 allow_missing_keys: bool = False):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.label_key = label_key

    def __call__(self, data: Mapping) -> dict:
        labels = data.get(self.label_key)
        if labels is None or not getattr(labels, "meta", {}).get(BRAIN_MASK_META, False):
            return dict(data)
        self.randomize(None)
        return self.apply(data)

    def apply(self, data: Mapping) -> dict:
        d = dict(data)
        if not self._do_transform:
            return d
        brain = torch.as_tensor(d[self.label_key]) > 0
        for key in self.key_iterator(d):
            d[key] = d[key] * brain.to(d[key].dtype)
        return d

