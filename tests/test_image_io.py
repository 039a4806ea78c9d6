"""Image headers and the reader policy: world positions must equal SimpleITK's (and so Slicer's)."""

import os
import re

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.transforms import LoadImage

from scripts.errors import LandmarkDataError
from scripts.geometry import ras_affine
from scripts.image_io import SimpleITKReader, check_finite, read_image_header

SHAPE = (8, 9, 10)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def sitk_ras_affine(path) -> np.ndarray:
    """RAS affine computed from sitk.ReadImage, independently of scripts.image_io."""
    image = sitk.ReadImage(str(path))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin())
    return affine


@pytest.fixture
def disagreeing_nifti(tmp_path):
    """qform (scanner, code 1): rotation + offset; sform (aligned, code 2): another rotation and offset, same zooms.

    ITK uses the qform here (it takes the sform only when its code is scanner-anatomical); nibabel's
    get_best_affine, hence MONAI's NibabelReader, takes the sform.
    """
    zooms = np.diag([1.5, 2.0, 2.5])
    qform, sform = np.eye(4), np.eye(4)
    qform[:3, :3], qform[:3, 3] = rotation_z(0.3) @ zooms, [10.0, -20.0, 30.0]
    sform[:3, :3], sform[:3, 3] = rotation_z(-0.7) @ zooms, [-5.0, 6.0, 7.0]
    data = np.zeros(SHAPE, np.float32)
    data[2, 3, 4] = 1.0
    image = nib.Nifti1Image(data, sform)
    image.set_qform(qform, code=1)
    image.set_sform(sform, code=2)
    path = tmp_path / "disagree.nii.gz"
    nib.save(image, path)
    return path, qform, sform


def test_itk_reader_header_and_simpleitk_agree_when_qform_and_sform_disagree(disagreeing_nifti):
    path, qform, sform = disagreeing_nifti
    expected = sitk_ras_affine(path)
    assert not np.allclose(qform, sform, atol=1e-3)
    np.testing.assert_allclose(expected, qform, atol=1e-4)  # what ITK chose, stated so a change in ITK shows up

    image = LoadImage(reader=SimpleITKReader(), image_only=True)(str(path))
    np.testing.assert_allclose(image.affine.numpy(), expected, atol=1e-4)
    assert tuple(image.shape) == SHAPE and image[2, 3, 4] == 1.0  # same (i, j, k) index order

    header = read_image_header(path)
    np.testing.assert_allclose(header.affine, expected, atol=1e-4)
    assert header.shape == SHAPE and header.n_components == 1
    np.testing.assert_allclose(header.spacing, [1.5, 2.0, 2.5], atol=1e-6)


def test_nibabel_reader_disagrees_which_is_why_the_policy_exists(disagreeing_nifti):
    path, _, sform = disagreeing_nifti
    nibabel_affine = LoadImage(reader="NibabelReader", image_only=True)(str(path)).affine.numpy()
    np.testing.assert_allclose(nibabel_affine, sform, atol=1e-4)
    assert not np.allclose(nibabel_affine, sitk_ras_affine(path), atol=1e-2)


def test_marker_world_position_matches_simpleitk(tmp_path):
    affine = np.eye(4)
    affine[:3, :3] = rotation_z(0.4) @ np.diag([0.8, 1.1, 1.7])
    affine[:3, 3] = [3.0, -4.0, 5.0]
    data = np.zeros(SHAPE, np.float32)
    marker = (6, 2, 7)
    data[marker] = 100.0
    path = tmp_path / "marker.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)

    image = sitk.ReadImage(str(path))
    assert image[marker] == 100.0  # SimpleITK indexes (i, j, k) like the header affine
    lps = np.array(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in marker]))
    world = read_image_header(path).affine @ np.array([*marker, 1.0])
    np.testing.assert_allclose(world[:3], LPS_TO_RAS @ lps, atol=1e-4)
    np.testing.assert_allclose(world[:3], affine[:3, :3] @ marker + affine[:3, 3], atol=1e-4)  # nibabel agrees here


def test_header_of_an_oblique_nrrd_written_by_simpleitk(tmp_path):
    image = sitk.Image(list(SHAPE), sitk.sitkInt16)
    image.SetSpacing([0.5, 0.75, 2.0])
    image.SetOrigin([1.0, 2.0, 3.0])
    image.SetDirection(rotation_z(0.25).flatten().tolist())
    path = tmp_path / "oblique.nrrd"
    sitk.WriteImage(image, str(path))
    header = read_image_header(path)
    expected = np.eye(4)
    expected[:3, :3] = LPS_TO_RAS @ rotation_z(0.25) @ np.diag([0.5, 0.75, 2.0])
    expected[:3, 3] = [-1.0, -2.0, 3.0]
    np.testing.assert_allclose(header.affine, expected, atol=1e-6)
    assert header.path == str(path) and header.shape == SHAPE
    np.testing.assert_allclose(header.spacing, [0.5, 0.75, 2.0], atol=1e-9)
    np.testing.assert_allclose(ras_affine(np.eye(3).flatten(), [1, 2, 3], [4, 5, 6])[:3, 3], [-4, -5, 6])


def write_dicom_series(folder, spacing=(1.5, 2.0, 2.5), origin=(10.0, -20.0, 30.0)):
    volume = sitk.GetImageFromArray(np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE[::-1]))
    volume.SetSpacing(spacing)
    volume.SetOrigin(origin)
    series = "1.2.826.0.1.3680043.2.1125.1.424242"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(SHAPE[2]):
        slice_ = volume[:, :, k]
        position = "\\".join(str(v) for v in volume.TransformIndexToPhysicalPoint((0, 0, k)))
        tags = {"0008|0060": "CT", "0020|000d": f"{series}.1", "0020|000e": series, "0008|0018": f"{series}.{k + 2}",
                "0020|0032": position, "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0013": str(k + 1)}
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(os.path.join(folder, f"slice{k:03d}.dcm"))
        writer.Execute(slice_)


def test_dicom_series_folder(tmp_path):
    write_dicom_series(tmp_path)
    header = read_image_header(tmp_path)
    assert header.shape == SHAPE
    np.testing.assert_allclose(header.spacing, [1.5, 2.0, 2.5], atol=1e-6)
    np.testing.assert_allclose(header.affine, np.diag([-1.5, -2.0, 2.5, 1.0]) + np.array(
        [[0, 0, 0, -10.0], [0, 0, 0, 20.0], [0, 0, 0, 30.0], [0, 0, 0, 0]]), atol=1e-6)
    np.testing.assert_allclose(LoadImage(reader=SimpleITKReader(), image_only=True)(str(tmp_path)).affine.numpy(),
                               header.affine, atol=1e-4)


def test_folder_without_dicom(tmp_path):
    with pytest.raises(LandmarkDataError, match=re.escape(str(tmp_path)) + ": no DICOM series found"):
        read_image_header(tmp_path)


def nifti(tmp_path, shape, name="image.nii.gz", **kwargs):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4), **kwargs), path)
    return path


def vector_image(tmp_path):
    path = tmp_path / "vector.nrrd"
    sitk.WriteImage(sitk.Image(list(SHAPE), sitk.sitkVectorFloat32, 3), str(path))
    return path


def corrupt_image(tmp_path):
    path = tmp_path / "corrupt.nii.gz"
    path.write_bytes(b"not an image at all" * 10)
    return path


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda tmp: tmp / "missing.nii.gz", "image file not found"),
        (corrupt_image, "cannot read image: Unable to determine ImageIO reader for"),
        (lambda tmp: nifti(tmp, (8, 9)), "2D image of size [8, 9]: expected a 3D image"),
        (lambda tmp: nifti(tmp, (8, 9, 10, 2)), "4D image of size [8, 9, 10, 2]: expected a 3D image"),
        (vector_image, "multi-component (vector) image with 3 components: expected scalar"),
    ],
)
def test_bad_images_give_one_line_naming_the_file(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(LandmarkDataError, match=re.escape(f"{path}: {problem}")) as raised:
        read_image_header(path)
    assert "\n" not in str(raised.value)


def test_trailing_singleton_dimension_is_3d(tmp_path):
    assert read_image_header(nifti(tmp_path, (8, 9, 10, 1))).shape == SHAPE


def test_check_finite():
    check_finite("a.nii.gz", np.zeros(SHAPE, np.float32))
    check_finite("a.nii.gz", np.zeros(SHAPE, np.int16))
    for bad in (np.nan, np.inf, -np.inf):
        array = np.zeros(SHAPE, np.float32)
        array[1, 2, 3] = bad
        with pytest.raises(LandmarkDataError, match=r"^a\.nii\.gz: image contains NaN or infinite intensities$"):
            check_finite("a.nii.gz", array)
        with pytest.raises(LandmarkDataError):
            check_finite("a.nii.gz", torch.from_numpy(array))


def _equal_loads(path):
    ours = LoadImage(reader=SimpleITKReader(), image_only=True)(str(path))
    theirs = LoadImage(reader="ITKReader", image_only=True)(str(path))
    assert tuple(ours.shape) == tuple(theirs.shape) and ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    for key in ("affine", "original_affine", "spatial_shape"):
        np.testing.assert_allclose(np.asarray(ours.meta[key]), np.asarray(theirs.meta[key]), atol=1e-6, err_msg=key)
    assert np.isnan(ours.meta["original_channel_dim"]) == np.isnan(float(theirs.meta["original_channel_dim"]))
    return ours


def test_simpleitk_reader_loads_exactly_what_monai_itkreader_loads(tmp_path, disagreeing_nifti):
    """Same array, index order, dtype, RAS affine and channel convention as MONAI's ITKReader."""
    _equal_loads(disagreeing_nifti[0])
    oblique = np.array([[0.0, -1.2, 0.1, 10.0], [0.9, 0.0, 0.0, -20.0], [0.05, 0.0, 2.0, 5.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6), oblique), str(tmp_path / "ct.nii.gz"))
    _equal_loads(tmp_path / "ct.nii.gz")  # int16 on disk, float32 after LoadImage in both
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((6, 7, 3, 2)).astype(np.float32), np.eye(4)), str(tmp_path / "4d.nii.gz"))
    assert _equal_loads(tmp_path / "4d.nii.gz").shape == (6, 7, 3, 2)
    nib.save(nib.Nifti1Image(np.ones((6, 7), dtype=np.float32), np.eye(4)), str(tmp_path / "2d.nii.gz"))
    _equal_loads(tmp_path / "2d.nii.gz")
    series = tmp_path / "series"
    series.mkdir()
    write_dicom_series(series)
    _equal_loads(series)
