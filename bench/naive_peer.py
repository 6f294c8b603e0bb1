"""The digit API the usual tutorials build: Flask, Pillow, a plain resize and ``model.predict``.

    NAIVE_MODEL=models/base.keras gunicorn -w 2 -k gthread --threads 4 --chdir bench naive_peer:app

``bench/load.py`` serves it with the same gunicorn settings as the service and compares the
two. Same route shape as the service's predict (POST multipart ``file`` -> JSON), no auth,
no database, no preprocessing beyond what the tutorials do.
"""

import io
import os

import keras
import numpy as np
from flask import Flask, jsonify, request
from PIL import Image

app = Flask(__name__)
model = keras.models.load_model(os.environ.get("NAIVE_MODEL", "models/base.keras"))


@app.route("/ready")
def ready():
    return jsonify(status="ready")


@app.route("/predict", methods=["POST"])
def predict():
    if "file" not in request.files:
        return jsonify(error="no file"), 400
    image = Image.open(io.BytesIO(request.files["file"].read()))
    image = image.convert("L").resize((28, 28))
    x = np.array(image, dtype=np.float32).reshape(1, 28, 28) / 255.0
    probabilities = model.predict(x, verbose=0)[0]
    return jsonify(prediction=int(np.argmax(probabilities)), confidence=float(np.max(probabilities)))
