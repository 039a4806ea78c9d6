"""Image headers through SimpleITK, the one reader policy, and image sanity checks.

World coordinates mean what ITK (and so Slicer) means. MONAI's NibabelReader may pick the other
of a NIfTI's qform/sform when they disagree, so pixels are loaded through ITK everywhere: with
``SimpleITKReader``, a MONAI ImageReader giving exactly MONAI's ITKReader arrays and RAS affines
without loading ITK's Python wrapping, which costs about 3 s in every process (a quarter of a
whole-head inference on 2 cores).
"""

from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import monai.transforms
import SimpleITK as sitk
from monai.data.image_reader import ImageReader, _copy_compatible_dict, _stack_images
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from scripts.errors import GeometryError, LandmarkDataError
from scripts.geometry import corner_distance_mm, is_rigid_and_scaled, ras_affine



@dataclass
class ImageHeader:
    """Geometry of a 3D scalar image; `affine` maps voxel index (i, j, k) to RAS world mm."""

    path: str
    shape: tuple[int, int, int]
    spacing: tuple[float, ...]
    affine: np.ndarray
    n_components: int


def _short_sitk_message(error: Exception) -> str:
    """SimpleITK's multi-line exception text reduced to its one informative line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR:" in line]
    message = (errors or lines or [type(error).__name__])[-1]
    message = message.split("ERROR:", 1)[-1].strip()
    return message if len(message) <= 200 else message[:197] + "..."


# ----------------------------------------------------------------------------- the reader policy
#
# Every command (check, planning, training, inference, MONAI Label) reads images through the functions
# below, so one file is either read the same way everywhere or refused with the same line everywhere:
# - NIfTI/NRRD/MHA files through ITK, whose voxel -> world rule is 3D Slicer's. A NIfTI whose sform is
#   sheared and that has no valid qform is refused (GeometryError): ITK and Slicer cannot read it and
#   MONAI's other readers would each pick another world. When qform and sform disagree, ITK's choice
#   is used and the disagreement reported (header_notes: a warning in check, a log line at inference).
# - A folder is one DICOM series: exactly one series, slices with one orientation, stacked along their
#   normal at one spacing (Slicer's tolerance); missing, doubled, uneven or tilted slices are refused.
# - A single slice (an axis of size 1) is not a 3D scan and is refused.

SLICE_SPACING_TOLERANCE_MM = 0.01  # 3D Slicer's DICOMScalarVolumePlugin accepts spacing differences up to 0.01 mm
SLICE_SPACING_TOLERANCE_RELATIVE = 0.01  # ... or 1% of the spacing, for positions written with few decimals
QFORM_SFORM_TOLERANCE_MM = 0.1  # qform/sform whose worlds differ by more than this at any image corner are reported
DICOM_MODALITY_TAG = "0008|0060"


def _dicom_series_files(folder: str) -> list[str]:
    """The slice files of the one DICOM series in ``folder``, in GDCM's order (along the slice normal)."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if not series:
        raise LandmarkDataError(folder, "no DICOM series found in folder")
    if len(series) > 1:
        # MONAI's ITKReader would silently take one of them; refuse the ambiguity instead.
        raise GeometryError(folder, f"folder holds {len(series)} DICOM series; give one series per folder")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series[0]))


def _numbers(text: str) -> np.ndarray:
    return np.asarray([float(v) for v in text.strip().split("\\")], dtype=np.float64)


def _check_dicom_slices(folder: str, files: list[str]) -> tuple[list[str], dict[str, str]]:
    """GeometryError unless the slices share one orientation and lie along its normal at one spacing.

    ITK stacks whatever slices it is given at the spacing of the first two and only prints a warning
    ("Non uniform sampling or missing slices detected"), so a series with 8 missing slices reads about
    5 mm off with no error. Returns the files sorted along the slice normal and the first slice's
    modality tag ({} when absent)."""
    reader = sitk.ImageFileReader()
    positions, orientations, first = [], [], {}
    for index, name in enumerate(files):
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            raise LandmarkDataError(name, f"cannot read DICOM slice: {_short_sitk_message(error)}") from None
        if index == 0 and reader.HasMetaDataKey(DICOM_MODALITY_TAG):
            first[DICOM_MODALITY_TAG] = reader.GetMetaData(DICOM_MODALITY_TAG)
        if len(files) == 1:
            return files, first  # one file: a multi-frame image, its geometry is the file's own
        if not (reader.HasMetaDataKey("0020|0032") and reader.HasMetaDataKey("0020|0037")):
            raise GeometryError(name, "DICOM slice without ImagePositionPatient/ImageOrientationPatient: "
                                      f"the slices of {folder} cannot be placed in space")
        positions.append(_numbers(reader.GetMetaData("0020|0032")))
        orientations.append(_numbers(reader.GetMetaData("0020|0037")))
    orientations = np.asarray(orientations)
    if np.abs(orientations - orientations[0]).max() > 1e-4:
        odd = int(np.argmax(np.abs(orientations - orientations[0]).max(axis=1)))
        raise GeometryError(folder, f"slices have different orientations ({os.path.basename(files[odd])} differs from "
                                    f"{os.path.basename(files[0])}): not one 3D volume")
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    order = np.argsort(np.asarray(positions) @ normal, kind="stable")  # GDCM keeps file order when positions repeat
    files = [files[i] for i in order]
    steps = np.diff(np.asarray(positions)[order], axis=0)
    gaps = steps @ normal
    if np.any(np.abs(gaps) < 1e-3):
        at = int(np.argmin(np.abs(gaps)))
        raise GeometryError(folder, f"two slices at the same position ({os.path.basename(files[at])}, "
                                    f"{os.path.basename(files[at + 1])}): several acquisitions in one series?")
    spacing = float(np.median(np.abs(gaps)))
    tolerance = max(SLICE_SPACING_TOLERANCE_MM, SLICE_SPACING_TOLERANCE_RELATIVE * spacing)
    uneven = np.flatnonzero(np.abs(np.abs(gaps) - spacing) > tolerance)
    if uneven.size:
        at = int(uneven[np.argmax(np.abs(np.abs(gaps[uneven]) - spacing))])
        raise GeometryError(folder, f"slices not equally spaced: {abs(gaps[at]):.2f} mm gap after {os.path.basename(files[at])} "
                                    f"where the spacing is {spacing:.2f} mm (missing slices?); {len(uneven)} uneven gap(s)")
    tilt = np.degrees(np.arccos(np.clip(np.abs(gaps) / np.linalg.norm(steps, axis=1), -1.0, 1.0))).max()
    if tilt > 0.5:
        raise GeometryError(folder, f"slices shifted in-plane along the stack (gantry tilt of {tilt:.1f} degrees): "
                                    "resample it to a rectilinear grid first")
    return files, first


def _check_not_a_slice(path: str, size) -> None:
    if len(size) >= 3 and min(size[:3]) < 2:
        hint = " (one slice of a DICOM series? give its folder)" if path.lower().endswith(".dcm") else ""
        raise GeometryError(path, f"a single slice of size {list(size)}: expected a 3D scan{hint}")


def _policy_error(path: str, error: RuntimeError, what: str = "cannot read image") -> LandmarkDataError:
    message = _short_sitk_message(error)
    if "orthonormal" in message:
        return GeometryError(path, f"{what}: sheared voxel axes in the sform and no valid qform ({message}); ITK and 3D Slicer "
                                   "refuse it too: resample it onto a rectilinear grid first")
    return LandmarkDataError(path, f"{what}: {message}")


class _QuietITK:
    """Silence ITK's raw stderr warnings while reading: what they say the policy reports as one line."""

    def __enter__(self):
        self.shown = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)

    def __exit__(self, *exc):
        sitk.ProcessObject.SetGlobalWarningDisplay(self.shown)


def read_image(path) -> sitk.Image:
    """The pixels of an image file, or of the one DICOM series in a folder, under the reader policy.

    Raises LandmarkDataError (file missing or unreadable) or GeometryError (sheared affine, several
    series, uneven or missing slices, a single slice). A DICOM series carries its first slice's
    modality tag (0008|0060) as metadata."""
    path = str(path)
    if not os.path.exists(path):
        raise LandmarkDataError(path, "image file not found")
    with _QuietITK():
        try:
            if os.path.isdir(path):
                files, tags = _check_dicom_slices(path, _dicom_series_files(path))
                image = sitk.ReadImage(files)
                for key, value in tags.items():
                    image.SetMetaData(key, value)
            else:
                image = sitk.ReadImage(path)
        except RuntimeError as error:
            raise _policy_error(path, error) from None
    _check_not_a_slice(path, image.GetSize())
    return image


def _open(path: str):
    """A SimpleITK object holding the geometry: the header reader of a file, the loaded series of a DICOM folder."""
    if os.path.isdir(path):
        return read_image(path)
    with _QuietITK():
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(path)
            reader.ReadImageInformation()
        except RuntimeError as error:
            raise _policy_error(path, error) from None
    return reader


def header_notes(path) -> list[str]:
    """Unusual but readable headers, one sentence each (empty for most files): a NIfTI whose qform and sform
    disagree, read with ITK's choice. ``scripts.check`` prints them as warnings, inference logs them."""
    path = str(path)
    if not path.lower().endswith((".nii", ".nii.gz")) or not os.path.isfile(path):
        return []
    try:
        header = nib.load(path).header
        itk = read_image_header(path).affine
    except (LandmarkDataError, OSError, ValueError, EOFError, zlib.error):
        return []
    qform_code, sform_code = int(header["qform_code"]), int(header["sform_code"])
    if not (qform_code > 0 and sform_code > 0):
        return []
    shape = header.get_data_shape()[:3]
    to_qform, to_sform = corner_distance_mm(header.get_qform(), itk, shape), corner_distance_mm(header.get_sform(), itk, shape)
    apart = corner_distance_mm(header.get_qform(), header.get_sform(), shape)
    if apart <= QFORM_SFORM_TOLERANCE_MM:
        return []
    used = "qform" if to_qform <= to_sform else "sform"
    other = "sform" if used == "qform" else "qform"
    sheared = " (the sform is sheared)" if used == "qform" and not is_rigid_and_scaled(header.get_sform()) else ""
    return [f"qform and sform disagree by up to {apart:.1f} mm{sheared}: read with the {used}, as ITK and 3D Slicer do; "
            f"tools that use the {other} (FSL and nibabel prefer the sform) place this scan elsewhere"]


def _components(source) -> int:
    if isinstance(source, sitk.Image):
        return source.GetNumberOfComponentsPerPixel()
    return source.GetNumberOfComponents()


def image_geometry(path):
    """The grid of a 3D scalar image file or DICOM series folder under the reader policy: an object with
    SimpleITK's ``GetSize()``, ``GetSpacing()`` (mm), ``GetOrigin()`` and ``GetDirection()`` (LPS, ITK's
    convention), from the file's header alone (a DICOM series is loaded). Raises LandmarkDataError /
    GeometryError with one line naming the file."""
    path = str(path)
    if not os.path.exists(path):
        raise LandmarkDataError(path, "image file not found")
    source = _open(path)
    dimension, size, components = source.GetDimension(), source.GetSize(), _components(source)
    if dimension != 3:
        raise LandmarkDataError(path, f"{dimension}D image of size {list(size)}: expected a 3D image")
    if components != 1:
        raise LandmarkDataError(path, f"multi-component (vector) image with {components} components: expected scalar")
    _check_not_a_slice(path, size)
    return source


def read_image_header(path) -> ImageHeader:
    """Shape, spacing and RAS affine of a 3D scalar image file or DICOM series folder, without its pixels."""
    source = image_geometry(path)
    return ImageHeader(
        path=str(path),
        shape=tuple(int(n) for n in source.GetSize()),
        spacing=tuple(float(s) for s in source.GetSpacing()),
        affine=ras_affine(source.GetDirection(), source.GetSpacing(), source.GetOrigin()),
        n_components=int(_components(source)),
    )


def check_finite(path, array) -> None:
    """LandmarkDataError when the intensities hold NaN or infinity (numpy or torch array)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating):
        if not np.isfinite(array).all():
            raise LandmarkDataError(path, "image contains NaN or infinite intensities")


def check_image_data(path) -> tuple[float, float]:
    """Read all pixels once: truncated or corrupt data and NaN/inf intensities only show here. Returns (min, max).

    NIfTI goes through nibabel because ITK hides both problems: it zero-fills a truncated .nii.gz and
    reads NaN voxels as 0, so the pixels the pipeline loads (through ITK) look clean.
    """
    path = str(path)
    if path.lower().endswith((".nii", ".nii.gz")):
        try:
            array = np.asanyarray(nib.load(path).dataobj)
        except (OSError, EOFError, zlib.error, ValueError) as error:
            message = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
            raise LandmarkDataError(path, f"cannot read image: truncated or corrupt file ({message})") from None
    else:
        try:
            array = sitk.GetArrayViewFromImage(read_image(path))
        except RuntimeError as error:
            raise LandmarkDataError(path, f"cannot read image data: {_short_sitk_message(error)}") from None
    check_finite(path, array)
    return (float(np.min(array)), float(np.max(array))) if array.size else (0.0, 0.0)


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping), else free pages, else None."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(path, shape, spacing, target_spacing, channels: int, available: int | None = None) -> None:
    """LandmarkDataError when the image resampled to ``target_spacing`` cannot be held ``channels`` times over.

    Checked before resampling: an image whose header promises a 1 m field of view at 0.2 mm spacing
    would otherwise be resampled until the operating system kills the process, with no message at all.
    """
    target = [max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing)]
    need = 4 * channels * int(np.prod(target, dtype=np.float64))
    available = available_memory_bytes() if available is None else available
    if available is not None and need > available:
        planned = "x".join(f"{t:g}" for t in target_spacing)
        raise LandmarkDataError(
            path, f"too big for memory: {'x'.join(map(str, target))} voxels at the planned {planned} mm spacing need about "
            f"{need / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available; crop it to the region of interest first")


class SimpleITKReader(ImageReader):
    """MONAI ImageReader on SimpleITK with ITKReader's conventions: array indexed (x, y, z[, channel]),
    ``affine``/``original_affine`` voxel -> RAS, ``spatial_shape``, ``original_channel_dim``.

    A folder is read as its one DICOM series (more than one series is refused, not picked from)."""

    def verify_suffix(self, filename) -> bool:
        return True  # whatever SimpleITK can read; it names the problem when it cannot

    def read(self, data, **kwargs):
        images = [read_image(str(path)) for path in ensure_tuple(data)]
        return images if len(images) > 1 else images[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        arrays: list[np.ndarray] = []
        compatible: dict = {}
        for image in img if isinstance(img, (list, tuple)) else [img]:  # not ensure_tuple: a sitk.Image iterates over its pixels
            array = sitk.GetArrayFromImage(image)  # (z, y, x[, components])
            array = array.T if image.GetNumberOfComponentsPerPixel() == 1 else np.moveaxis(array.T, 0, -1)
            arrays.append(array)
            rank = max(min(image.GetDimension(), 3), 1)  # ITKReader's spatial rank: a 4D image has 3 spatial axes
            direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(image.GetDimension(), image.GetDimension())
            header = {
                "spacing": np.asarray(image.GetSpacing()),
                MetaKeys.ORIGINAL_AFFINE: ras_affine(direction[:rank, :rank], image.GetSpacing()[:rank], image.GetOrigin()[:rank]),
                MetaKeys.SPACE: SpaceKeys.RAS,
                MetaKeys.SPATIAL_SHAPE: np.asarray(image.GetSize()[:rank]),
            }
            header[MetaKeys.AFFINE] = header[MetaKeys.ORIGINAL_AFFINE].copy()
            header[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan") if array.ndim == rank else -1
            _copy_compatible_dict(header, compatible)
        return _stack_images(arrays, compatible), compatible


class LoadImaged(monai.transforms.LoadImaged):
    """MONAI's LoadImaged through :class:`SimpleITKReader` only, the reader policy.

    Given a reader, MONAI's LoadImage still falls back to its other readers when that one fails, so a
    NIfTI that ITK refuses (sheared sform, no qform) was loaded by NibabelReader in a world of its own
    choosing, with only an INFO line. Here the policy's one-line error (GeometryError/LandmarkDataError)
    propagates instead, and headers the policy reads but finds unusual (header_notes) are logged."""

    def __init__(self, keys, **kwargs):
        kwargs.pop("reader", None)
        super().__init__(keys, reader=SimpleITKReader(), **kwargs)
        self.policy_reader = self._loader.readers[-1]

    def __call__(self, data, reader=None):
        for key in self.key_iterator(dict(data)):
            for path in ensure_tuple(data[key]):
                for note in header_notes(path):
                    logging.getLogger("scripts.image_io").warning(f"{path}: {note}")
        return super().__call__(data, reader=self.policy_reader)
