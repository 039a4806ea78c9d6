"""MONAI Label app serving this bundle's landmark detector to 3D Slicer (and any MONAI Label client).

    python -m monailabel.main start_server --app monailabel_app --studies STUDIES_DIR [--conf bundle_root PATH]

One infer task, ``landmarks`` (type "segmentation", so Slicer's MONAI Label module lists it): for an
image it returns the landmark positions (world RAS mm, names, scores, found) in the result JSON and a
label image with a small sphere per landmark (label = landmark index + 1, names in ``label_names``).
The folder is not called ``monailabel`` so that it never shadows the package.
"""

from __future__ import annotations

import os
import sys

from monailabel.interfaces.app import MONAILabelApp

APP_DIR = os.path.dirname(os.path.abspath(__file__))
if APP_DIR not in sys.path:
    sys.path.insert(0, APP_DIR)

from landmark_task import LandmarkInferTask  # noqa: E402


class LandmarkDetectionApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.bundle_root = os.path.abspath(conf.get("bundle_root", os.path.join(app_dir, os.pardir)))
        if self.bundle_root not in sys.path:
            sys.path.insert(0, self.bundle_root)  # the bundle's scripts package
        from scripts.serving import LandmarkPredictor

        self.predictor = LandmarkPredictor(self.bundle_root)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="Landmark detection",
                         description="3D anatomical landmark detection (nnLandmark method, MONAI bundle)", version="1.0",
                         labels={name: i + 1 for i, name in enumerate(self.predictor.landmark_names)})


    def init_infers(self):
        return {"landmarks": LandmarkInferTask(self.predictor, radius_mm=float(self.conf.get("sphere_radius_mm", 2.0)))}
