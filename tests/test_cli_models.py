"""The model CLI: evaluate, train-base, list."""

import json
from pathlib import Path

import numpy as np

from support import FIXTURES


def test_evaluate_an_image_folder_through_the_api_preprocessing(runner):
    result = runner.invoke(args=["model", "evaluate", "--data", str(FIXTURES / "mnist50")])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output.strip().splitlines()[-1])
    assert body["n"] == 50 and body["model_version"] == "base-1"
    assert body["accuracy"] >= 0.96


def test_evaluate_mnist_format_prefers_test_files(runner, tmp_path, replay_digits):
    x, y = replay_digits
    np.savez(tmp_path / "train.npz", x=x[:10], y=y[:10])
    np.savez(tmp_path / "t10k-sample.npz", x=x[:200], y=y[:200])
    result = runner.invoke(args=["model", "evaluate", "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output.strip().splitlines()[-1])
    assert body["n"] == 200 and body["accuracy"] > 0.95


def test_train_base_registers_and_activates_a_new_version(app, runner, tmp_path, replay_digits):
    x, y = replay_digits
    np.savez(tmp_path / "digits.npz", x=x[:300], y=y[:300])
    result = runner.invoke(args=["model", "train-base", "--data", str(tmp_path / "digits.npz"), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output.strip().splitlines()[-1])
    assert body["model_version"] == "base-2" and body["status"] == "active"
    # A tenth (3 per digit) is held out to fit the calibration temperature on, never trained on.
    assert body["metrics"]["train_samples"] == 270
    calibration = body["metrics"]["calibration"]
    assert calibration["n"] == 30 and 0.05 <= calibration["temperature"] <= 20
    with app.app_context():
        from app.services import model_versions

        assert model_versions.get_version("base-2").temperature == calibration["temperature"]
    listing = runner.invoke(args=["model", "list"])
    assert "* base-2" in listing.output and "base-1" in listing.output
    assert (Path(app.config["MODEL_DIR"]) / "base-2.keras").exists()
