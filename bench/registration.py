"""Atlas registration with SimpleITK, the reference the landmark detector is measured against.

    python bench/registration.py TEMPLATE_IMAGE TEMPLATE_LANDMARKS CASE_IMAGE [--bspline]

registers the template (fixed) to the case (moving) and prints the template's landmarks carried into
the case (RAS mm, JSON). As a command it includes the process start-up a user waits for.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def _registration(shrink: list[int], smooth: list[float]) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.02, seed=0)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel(smooth)
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def register_affine(template: sitk.Image, case: sitk.Image) -> sitk.Transform:
    """Template (fixed) -> case (moving): the transform maps template points to case points."""
    initial = sitk.CenteredTransformInitializer(template, case, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS)
    method = _registration([4, 2, 1], [2.0, 1.0, 0.0])
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=200, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(template, case)


def register_bspline(template: sitk.Image, case: sitk.Image, affine: sitk.Transform, control_spacing_mm: float = 40.0) -> sitk.Transform:
    """Affine, then a B-spline on top of it (control points every ``control_spacing_mm``)."""
    mesh = [max(1, int(round(n * s / control_spacing_mm))) for n, s in zip(template.GetSize(), template.GetSpacing())]
    bspline = sitk.BSplineTransformInitializer(template, mesh)
    method = _registration([4, 2], [2.0, 1.0])  # full resolution adds minutes per case for little on 40 mm control spacing
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=30, maximumNumberOfCorrections=5)
    method.SetMovingInitialTransform(affine)
    method.SetInitialTransform(bspline, inPlace=True)
    method.Execute(template, case)
    composite = sitk.CompositeTransform(affine)
    composite.AddTransform(bspline)  # applied first: x -> affine(bspline(x))
    return composite


def carry_landmarks(transform: sitk.Transform, template_ras: np.ndarray) -> np.ndarray:
    """Template RAS points (N, 3) -> case RAS points through a SimpleITK transform (which works in LPS)."""
    from scripts.geometry import lps_to_ras, ras_to_lps

    lps = ras_to_lps(template_ras)
    return lps_to_ras([transform.TransformPoint(tuple(map(float, p))) for p in lps])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("template")
    parser.add_argument("template_landmarks")
    parser.add_argument("case")
    parser.add_argument("--bspline", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from scripts.landmark_io import read_landmarks

    points = read_landmarks(args.template_landmarks)
    template = sitk.ReadImage(args.template, sitk.sitkFloat32)
    case = sitk.ReadImage(args.case, sitk.sitkFloat32)
    transform = register_affine(template, case)
    if args.bspline:
        transform = register_bspline(template, case, transform)
    carried = carry_landmarks(transform, np.array([points[n] for n in points]))
    print(json.dumps({name: [round(float(v), 3) for v in p] for name, p in zip(points, carried)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
