"""Image headers through SimpleITK, the one reader policy, and image sanity checks.

World coordinates mean what ITK (and so Slicer) means. MONAI's NibabelReader may pick the other
of a NIfTI's qform/sform when they disagree, so pixels are loaded through ITK everywhere: with
``SimpleITKReader``, a MONAI ImageReader giving exactly MONAI's ITKReader arrays and RAS affines
without loading ITK's Python wrapping, which costs about 3 s in every process (a quarter of a
whole-head inference on 2 cores).
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from monai.data.image_reader import ImageReader, _copy_compatible_dict, _stack_images
from monai.data.utils import orientation_ras_lps
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from scripts.errors import LandmarkDataError



@dataclass
class ImageHeader:
    """Geometry of a 3D scalar image; `affine` maps voxel index (i, j, k) to RAS world mm."""

    path: str
    shape: tuple[int, int, int]
    spacing: tuple[float, ...]
    affine: np.ndarray
    n_components: int


def ras_affine(direction, spacing, origin) -> np.ndarray:
    """(n+1)x(n+1) voxel -> RAS affine from ITK's LPS direction (row-major n x n), spacing and origin (n = len(spacing))."""
    rank = len(spacing)
    affine = np.eye(rank + 1)
    affine[:rank, :rank] = np.asarray(direction, dtype=np.float64).reshape(rank, rank) * np.asarray(spacing, dtype=np.float64)
    affine[:rank, rank] = origin
    return orientation_ras_lps(affine)


def _short_sitk_message(error: Exception) -> str:
    """SimpleITK's multi-line exception text reduced to its one informative line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR:" in line]
    message = (errors or lines or [type(error).__name__])[-1]
    message = message.split("ERROR:", 1)[-1].strip()
    return message if len(message) <= 200 else message[:197] + "..."


def _dicom_series_files(folder: str) -> list[str]:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if not series:
        raise LandmarkDataError(folder, "no DICOM series found in folder")
    if len(series) > 1:
        # MONAI's ITKReader would silently take one of them; refuse the ambiguity instead.
        raise LandmarkDataError(folder, f"folder holds {len(series)} DICOM series; give one series per folder")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series[0]))


def _read_image(path: str) -> sitk.Image:
    """The image of a file, or of the one DICOM series in a folder."""
    return sitk.ReadImage(_dicom_series_files(path) if os.path.isdir(path) else path)


def _open(path: str):
    """A SimpleITK object holding the geometry: the header reader of a file, the loaded series of a DICOM folder."""
    try:
        if os.path.isdir(path):
            return _read_image(path)
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        return reader
    except RuntimeError as error:
        raise LandmarkDataError(path, f"cannot read image: {_short_sitk_message(error)}") from None


def _components(source) -> int:
    if isinstance(source, sitk.Image):
        return source.GetNumberOfComponentsPerPixel()
    return source.GetNumberOfComponents()


def read_image_header(path) -> ImageHeader:
    """Shape, spacing and RAS affine of a 3D scalar image file or DICOM series folder, without its pixels."""
    path = str(path)
    if not os.path.exists(path):
        raise LandmarkDataError(path, "image file not found")
    source = _open(path)
    dimension, size, components = source.GetDimension(), source.GetSize(), _components(source)
    if dimension != 3:
        raise LandmarkDataError(path, f"{dimension}D image of size {list(size)}: expected a 3D image")
    if components != 1:
        raise LandmarkDataError(path, f"multi-component (vector) image with {components} components: expected scalar")
    return ImageHeader(
        path=path,
        shape=tuple(int(n) for n in size),
        spacing=tuple(float(s) for s in source.GetSpacing()),
        affine=ras_affine(source.GetDirection(), source.GetSpacing(), source.GetOrigin()),
        n_components=int(components),
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
            array = sitk.GetArrayViewFromImage(_read_image(path))
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
        images = [_read_image(str(path)) for path in ensure_tuple(data)]
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
