"""The framework peer: BentoML serving the service's exported ONNX model, as its docs show.

    BENTO_ONNX_MODEL=models/base.onnx bentoml serve bento_service:DigitClassifier --port 3000

(from the ``bench/`` folder). ``bench/load.py`` starts it beside the service and compares the
two. Same route shape as the service's predict (POST multipart ``file`` -> JSON); Pillow
decodes the upload (BentoML's ``PIL.Image`` input type), a plain grayscale resize to 28x28,
then ONNX Runtime. No auth, no preprocessing, no database. Readiness: BentoML's ``/readyz``.
"""

import os

import bentoml
import numpy as np
from PIL.Image import Image


@bentoml.service(workers=2, traffic={"timeout": 60})
class DigitClassifier:
    def __init__(self) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(
            os.environ.get("BENTO_ONNX_MODEL", "models/base.onnx"), providers=["CPUExecutionProvider"]
        )

    @bentoml.api
    def predict(self, file: Image) -> dict:
        x = np.asarray(file.convert("L").resize((28, 28)), dtype=np.float32).reshape(1, 28, 28) / 255.0
        probabilities = self.session.run(None, {"image": x})[0][0]
        return {"prediction": int(np.argmax(probabilities)), "confidence": float(np.max(probabilities))}
