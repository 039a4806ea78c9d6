"""The MONAI Label infer task: the bundle's LandmarkPredictor behind MONAI Label's InferTask interface.

Built on BasicInferTask (not BundleInferTask, which imports torchvision at module level and does not
import beside the CPU torch wheel) with ``__call__`` replaced: the bundle's own pipeline does the
pre-processing, inference and extraction, so a MONAI Label answer equals the command line's.
"""

from __future__ import annotations

import logging
import tempfile
import time

from fastapi import HTTPException
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

logger = logging.getLogger(__name__)


class LandmarkInferTask(BasicInferTask):
    def __init__(self, predictor, radius_mm: float = 2.0):
        names = predictor.landmark_names
        super().__init__(path=None, network=None, type=InferType.SEGMENTATION, labels={n: i + 1 for i, n in enumerate(names)},
                         dimension=3, description=f"{len(names)} anatomical landmarks: positions in RAS mm and a sphere per landmark")
        self.predictor = predictor
        self.radius_mm = radius_mm

    def is_valid(self) -> bool:
        return True

    # BasicInferTask's pipeline hooks: unused, __call__ runs the bundle's own pipeline instead
    def pre_transforms(self, data=None):
        return []

    def post_transforms(self, data=None):
        return []

    def __call__(self, request, callbacks=None):
        from scripts.errors import bundle_error_in
        from scripts.serving import write_landmark_label

        started = time.time()
        image = request.get("image")
        if not isinstance(image, str):
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, "landmarks: the request needs an image file")
        label_file = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
        try:
            record = self.predictor.predict(image)
            label_names = write_landmark_label(image, record, label_file, self.radius_mm, self.predictor.landmark_names)
        except Exception as error:  # noqa: BLE001 - the bundle's own errors may come wrapped (MONAI's transforms)
            bad_input = bundle_error_in(error)
            if bad_input is None:
                raise
            # a bad image is the client's problem: 400 with the one-line reason (LandmarkError), not a bare 500
            logger.error("landmarks: %s", bad_input)
            raise HTTPException(status_code=400, detail=str(bad_input)) from None
        result = {**record, "label_names": label_names, "latencies": {"total": round(time.time() - started, 3)}}
        return label_file, result
