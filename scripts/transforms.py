"""Dictionary transforms that carry landmarks through the image pipeline.

Landmarks live in world coordinates (RAS mm, key ``landmarks_world``). MONAI's spatial transforms
(Orientation, Spacing, crop/pad, RandAffine, Flip) keep the MetaTensor ``.affine`` current so that
the world position of the image content does not change; the voxel position of a landmark in any
intermediate or final array is therefore ``inv(affine) @ world``, exact to floating point. Only
transforms that move content within the grid (elastic deformation, left/right flips that swap
channels) rewrite ``landmarks_world``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Flip, MapTransform, Randomizable, RandomizableTransform, SpatialCrop, Transform

from scripts.cascade import COARSE_LANDMARKS_KEY
from scripts.errors import LandmarkDataError
from scripts.heatmaps import extract_landmarks, pair_permutation, correct_left_right, render_heatmaps
from scripts.uncertainty import configuration_flags, found_flags, heatmap_covariances, radii
from scripts.image_io import check_finite, check_fits_in_memory, check_image_data
from scripts.data import landmarks_to_array
from scripts.geometry import voxel_spacing, voxel_to_world, world_to_voxel
from scripts.landmark_names import unknown_message


def image_sources(image) -> list[str]:
    """The file(s) an image was loaded from (several for co-registered multi-modal input)."""
    meta = getattr(image, "meta", {}) or {}
    source = meta.get("filename_or_obj", "<image>")
    return [str(s) for s in source] if isinstance(source, (list, tuple)) else [str(source)]


def image_source(image) -> str:
    """The (first) file an image was loaded from, for error messages and output names."""
    return image_sources(image)[0]


def affine_of(image) -> np.ndarray:
    affine = image.affine if isinstance(image, MetaTensor) else np.eye(4)
    return np.asarray(affine.detach().cpu().numpy() if torch.is_tensor(affine) else affine, dtype=np.float64)


class LoadLandmarksd(Transform):
    """``{name: [x, y, z]}`` (as resolved by the datalist loader) -> ``landmarks_world`` (N, 3), NaN = unannotated.

    Entries without landmarks (inference) get an all-NaN array so batches always collate. A name that is
    not one of ``landmark_names`` raises LandmarkDataError (naming the image and every such name): a point
    is never dropped silently (the datalist loader has already matched names to channels, see
    scripts.landmark_names).
    """

    def __init__(self, landmark_names: Sequence[str], key: str = "landmarks", world_key: str = "landmarks_world"):
        self.landmark_names = list(landmark_names)
        self.key = key
        self.world_key = world_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        given = d.pop(self.key, None) or {}
        if isinstance(given, np.ndarray) or torch.is_tensor(given):
            d[self.world_key] = np.asarray(given, dtype=np.float64).reshape(len(self.landmark_names), 3)
        else:
            unknown = [f"'{name}'" for name in given if name not in self.landmark_names]
            if unknown:
                image = d.get("image", "<case>")
                source = image if isinstance(image, (str, os.PathLike)) else image_source(image)
                raise LandmarkDataError(source, "annotation " + unknown_message(unknown, "the model's landmark_names"))
            d[self.world_key] = landmarks_to_array(given, self.landmark_names)
        return d


class CheckImaged(MapTransform):
    """Reject what the reader accepted but the model cannot use: not one 3D channel, non-finite values.

    ``check_files`` also vets the files themselves (ITK hides truncation and NaN, see image_io); training
    turns it off because ``scripts.data.check_cases`` has already read every file once. With ``spacing``
    (the planned one) the image must fit in memory once resampled, ``working_channels`` times over (the
    image, its resampled copy and one heatmap per landmark at inference).
    """

    def __init__(self, keys: KeysCollection, channels: int = 1, check_files: bool = True,
                 spacing: Sequence[float] | None = None, working_channels: int = 2):
        super().__init__(keys)
        self.channels = channels
        self.check_files = check_files
        self.spacing = spacing
        self.working_channels = working_channels

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            source = image_source(image)
            for path in image_sources(image) if self.check_files else ():
                if os.path.exists(path):
                    check_image_data(path)
            if image.ndim != 4:
                raise LandmarkDataError(source, f"expected a 3D image, got {image.ndim - 1} spatial dimensions")
            if image.shape[0] != self.channels:
                raise LandmarkDataError(source, f"expected {self.channels} channel(s), got {image.shape[0]}")
            check_finite(source, image)
            if self.spacing is not None:
                check_fits_in_memory(source, image.shape[1:], voxel_spacing(affine_of(image)), self.spacing, self.working_channels)
        return d


class LandmarksToVoxeld(MapTransform):
    """Voxel coordinates of the landmarks in the current image grid: ``landmarks = inv(affine) @ landmarks_world``."""

    def __init__(self, image_key: str = "image", world_key: str = "landmarks_world", voxel_key: str = "landmarks"):
        super().__init__(keys=[world_key])
        self.image_key = image_key
        self.world_key = world_key
        self.voxel_key = voxel_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        d[self.voxel_key] = world_to_voxel(affine_of(d[self.image_key]), np.asarray(d[self.world_key]))
        return d


class RandLandmarkCropd(Randomizable, MapTransform):
    """Crop a patch that contains a landmark with probability ``landmark_ratio``, else anywhere.

    nnU-Net's foreground oversampling recast for points: most patches teach where a landmark is,
    the rest teach where none are. The chosen landmark lands anywhere in a centred box of
    ``landmark_region`` voxels (default: the central 80% of the crop), so a crop that is later
    resampled to a smaller patch still holds it. The image must already be at least ``roi_size``.

    Landmarks are chosen with weights 1 / (landmarks within reach of it, itself included), so a dense
    cluster as a whole is chosen as often as one isolated landmark. Uniform choice lets a cluster
    (AFIDs: 14 points around the brain stem) ride along in most patches while outlying landmarks
    (the occipital horns) appear in one patch of fifteen, and a sigmoid/MSE network then learns to
    answer 0 for them everywhere.

    The patch is a copy (its own memory and metadata), never a view: the input may be a cached case that
    later samples read again, and nothing after the crop may write into it.
    """

    def __init__(
        self,
        keys: KeysCollection,
        roi_size: Sequence[int],
        landmark_region: Sequence[int] | None = None,
        landmark_ratio: float = 0.67,
        image_key: str = "image",
        world_key: str = "landmarks_world",
    ):
        MapTransform.__init__(self, keys)
        self.roi_size = np.asarray(roi_size, dtype=int)
        region = self.roi_size * 0.8 if landmark_region is None else np.asarray(landmark_region, dtype=float)
        self.reach = region / 2
        self.landmark_ratio = landmark_ratio
        self.image_key = image_key
        self.world_key = world_key

    def choose_center(self, shape: np.ndarray, voxels: np.ndarray) -> np.ndarray:
        half = self.roi_size // 2
        lowest, highest = half, shape - (self.roi_size - half)
        inside = np.all(np.isfinite(voxels), axis=1) & np.all((voxels >= 0) & (voxels <= shape - 1), axis=1)
        if inside.any() and self.R.rand() < self.landmark_ratio:
            candidates = np.flatnonzero(inside)
            target = voxels[self.R.choice(candidates, p=self.balanced_weights(voxels[candidates]))]
            center = np.round(target + self.R.uniform(-self.reach, self.reach))
        else:
            center = np.array([self.R.randint(lo, hi + 1) for lo, hi in zip(lowest, highest)])
        return np.clip(center, lowest, highest).astype(int)

    def balanced_weights(self, voxels: np.ndarray) -> np.ndarray:
        """Choice probabilities: 1 / (landmarks within ``reach`` of each, per axis), normalised."""
        within = np.all(np.abs(voxels[:, None, :] - voxels[None, :, :]) <= self.reach, axis=2)
        weights = 1.0 / within.sum(axis=1)
        return weights / weights.sum()

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = d[self.image_key]
        shape = np.asarray(image.shape[1:])
        if np.any(shape < self.roi_size):
            raise ValueError(f"{image_source(image)}: image {tuple(shape)} is smaller than the patch; pad first")
        voxels = world_to_voxel(affine_of(image), np.asarray(d[self.world_key]))
        center = self.choose_center(shape, voxels)
        start = center - self.roi_size // 2
        cropper = SpatialCrop(roi_start=start.tolist(), roi_end=(start + self.roi_size).tolist())
        for key in self.key_iterator(d):
            d[key] = cropper(d[key]).clone()  # its own memory, never a view of the cached case (docstring)
        return d


class RandFlipLandmarksd(RandomizableTransform, MapTransform):
    """Mirror along one array axis; on the left/right axis, the paired landmark channels swap.

    After a mirror along the left/right axis, the structure that looks like the left one is the
    former right one, so the "left" channel must now point at it. Flip keeps world positions of
    content fixed (it rewrites the affine), so only the channel order of ``landmarks_world`` changes.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_axis: int,
        prob: float = 0.5,
        left_right_pairs: Sequence[Sequence[int]] = (),
        left_right_axis: int = 0,
        world_key: str = "landmarks_world",
    ):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.flipper = Flip(spatial_axis=spatial_axis)
        self.swaps_pairs = spatial_axis == left_right_axis
        self.pairs = [tuple(p) for p in left_right_pairs]
        self.world_key = world_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = self.flipper(d[key])
        if self.swaps_pairs and self.pairs:
            world = np.asarray(d[self.world_key])
            d[self.world_key] = world[pair_permutation(len(world), self.pairs)]
        return d


class LandmarkHeatmapd(Transform):
    """Render the training target: one Gaussian per landmark at its float voxel position, peak 1.

    ``label_mask`` is 1 for every landmark annotated in the case and 0 for unannotated ones. A
    landmark outside the patch keeps mask 1: its target there is (near) zero and known, which is
    what teaches the network not to fire on landmark-free patches (docs/design_notes.md).
    """

    def __init__(
        self,
        sigma: float | Sequence[float],
        image_key: str = "image",
        voxel_key: str = "landmarks",
        label_key: str = "label",
        mask_key: str = "label_mask",
    ):
        self.sigma = sigma
        self.image_key = image_key
        self.voxel_key = voxel_key
        self.label_key = label_key
        self.mask_key = mask_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = d[self.image_key]
        voxels = np.asarray(d[self.voxel_key], dtype=np.float64)
        heatmaps = render_heatmaps(voxels, tuple(image.shape[1:]), self.sigma)
        d[self.label_key] = MetaTensor(torch.from_numpy(heatmaps), affine=image.affine, meta=dict(image.meta))
        d[self.mask_key] = torch.from_numpy(np.all(np.isfinite(voxels), axis=1).astype(np.float32))
        return d


class ExtractLandmarksd(Transform):
    """Heatmaps -> landmark positions: per-channel peak, sub-voxel refinement, left/right correction.

    Writes ``pred_landmarks`` (voxel, in the preprocessed image's grid), ``pred_landmarks_world`` (RAS mm),
    ``pred_landmarks_input_voxel`` (float index in the image as it was read), ``pred_scores`` and
    ``pred_found``; after the cascade also ``pred_coarse_landmarks_world`` (RAS mm, the coarse stage's position of
    each channel, before the left/right correction). The mapping back is exact because every preprocessing step
    kept the affine.
    """

    def __init__(
        self,
        pred_key: str = "pred",
        image_key: str = "image",
        left_right_pairs: Sequence[Sequence[int]] = (),
        found_threshold: float = 0.25,
        sigma: float | Sequence[float] | None = None,
        calibration: Mapping | None = None,
        landmark_names: Sequence[str] | None = None,
    ):
        self.pred_key = pred_key
        self.image_key = image_key
        self.pairs = [tuple(p) for p in left_right_pairs]
        self.found_threshold = found_threshold
        self.sigma = sigma  # the trained target's, voxels (one or per axis); set: also the heatmap covariance per landmark
        self.calibration = dict(calibration or {})
        self.landmark_names = list(landmark_names or [])

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image, heatmaps = d[self.image_key], d[self.pred_key]
        # heatmaps carry their own grid (the cascade's cover only the box of its patches); plain ones share the image's
        heatmap_affine = affine_of(heatmaps if isinstance(heatmaps, MetaTensor) else image)
        voxels, scores = extract_landmarks(heatmaps)
        world = voxel_to_world(heatmap_affine, voxels)
        world, order = correct_left_right(world, self.pairs)
        scores = np.asarray(scores)[order]
        original = image.meta.get("original_affine", image.affine) if isinstance(image, MetaTensor) else np.eye(4)
        d["pred_landmarks_world"] = world
        coarse = heatmaps.meta.get(COARSE_LANDMARKS_KEY) if isinstance(heatmaps, MetaTensor) else None
        if coarse is not None:  # the cascade's coarse positions (input-grid voxels, per channel, before the pair correction)
            d["pred_coarse_landmarks_world"] = voxel_to_world(affine_of(image), np.asarray(coarse, dtype=np.float64).reshape(-1, 3))
        d["pred_landmarks"] = world_to_voxel(affine_of(image), world)
        d["pred_landmarks_input_voxel"] = world_to_voxel(np.asarray(original, dtype=np.float64), world)
        d["pred_scores"] = scores
        found = found_flags(scores, self.found_threshold)
        if self.sigma is not None:
            covariances = heatmap_covariances(heatmaps, voxels, self.sigma, heatmap_affine)[order]
            radius = radii(self.calibration, covariances, scores)
            flagged, _ = configuration_flags(world, self.calibration.get("distances"), self.landmark_names or range(len(world)))
            d["pred_covariance_mm2"], d["pred_radius_mm"], d["pred_flagged"] = covariances, radius, flagged
            d["pred_coverage"] = self.calibration.get("coverage")
            found = found_flags(scores, self.found_threshold, flagged, radius, self.calibration)
        d["pred_found"] = found
        return d
