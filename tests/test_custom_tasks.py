"""Custom tasks (issue 9, item 4): a job names its own metric (`evaluate`) and loss, and
the real flow trains, searches, floors and reports with them: a regression model and a
multi-label model, compressed through the CLI."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pipeline import spec as spec_mod
from pipeline.cli.main import main
from pipeline.job import preflight
from pipeline.job.modelfile import load_saved

# ---------------------------------------------------------------- the user's code


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _split(x: torch.Tensor, y: torch.Tensor):
    sets = [TensorDataset(x[a:b], y[a:b]) for a, b in ((0, 160), (160, 200), (200, 240))]
    return tuple(DataLoader(s, batch_size=32) for s in sets)


def regression_data():
    """Targets: a smooth function of the image (its mean and its top-left quarter)."""
    x = _images(240, 1)
    y = (2 * x.mean(dim=(1, 2, 3)) - x[:, :, :4, :4].mean(dim=(1, 2, 3))).unsqueeze(1)
    return _split(x, y)


def multilabel_data():
    """Three independent binary labels per image (float 0/1 vectors)."""
    x = _images(240, 2)
    y = torch.stack(
        [
            x.mean(dim=(1, 2, 3)) > 0,
            x[:, 0, :4].mean(dim=(1, 2)) > 0,
            x[:, 0, 4:].mean(dim=(1, 2)) > 0,
        ],
        dim=1,
    ).float()
    return _split(x, y)


class ConvHead(nn.Module):
    """Conv + BatchNorm trunk with ``outputs`` real-valued outputs (no classes)."""

    def __init__(self, outputs: int = 1, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


def regressor() -> nn.Module:
    torch.manual_seed(0)
    return ConvHead(1)


def tagger() -> nn.Module:
    torch.manual_seed(0)
    return ConvHead(3)


def mse_loss(model, batch):
    x, y = batch
    return F.mse_loss(model(x), y)


def negative_mse(model, loader, device):
    """Higher is better: minus the mean squared error (never a value accuracy can take)."""
    total, n = 0.0, 0
    for x, y in loader:
        total += float(F.mse_loss(model(x.to(device)), y.to(device), reduction="sum"))
        n += y.numel()
    return -total / n


def bce_loss(model, batch):
    x, y = batch
    return F.binary_cross_entropy_with_logits(model(x), y)


def label_accuracy(model, loader, device):
    """Share of the individual labels predicted right (logit > 0 means present)."""
    right, n = 0, 0
    for x, y in loader:
        pred = (model(x.to(device)) > 0).float()
        right += int((pred == y.to(device)).sum())
        n += y.numel()
    return right / n


# ------------------------------------------------------------------------ the flow


def _run(tmp_path, data: str, model: str, evaluate: str, loss: str) -> tuple[int, dict]:
    job = tmp_path / "job.yaml"
    job.write_text(f"evaluate: {evaluate}\nloss: {loss}\ntarget:\n  max_accuracy_drop: 100\n")
    code = main([
        "run", "--job", str(job),
        "--model", model, "--data", data,
        "--pretrain-epochs", "4", "--epochs", "1", "--rounds", "1",
        "--target-compression", "1.3",
        "--measure-batch", "8", "--repeats", "3", "--no-register",
        "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
        "--output", str(tmp_path / "out"),
        "--summary-json", str(tmp_path / "summary.json"),
    ])  # fmt: skip
    return code, json.loads((tmp_path / "summary.json").read_text())


def _check_metric_is_the_users(tmp_path, summary, data_fn, metric) -> None:
    _, val, test = data_fn()
    base_onnx = Path(summary["artifacts"]["baseline_onnx"])
    base = load_saved(base_onnx.with_name("model.safetensors")).eval()
    with torch.no_grad():
        assert summary["baseline"]["accuracy"] == pytest.approx(metric(base, val, "cpu"))
        assert summary["baseline"]["test_accuracy"] == pytest.approx(metric(base, test, "cpu"))
        best = load_saved(summary["artifacts"]["best_model"]).eval()
        assert summary["best"]["accuracy"] == pytest.approx(metric(best, val, "cpu"), abs=1e-6)
        assert summary["best"]["test_accuracy"] == pytest.approx(metric(best, test, "cpu"))


@pytest.mark.usefixtures("prefect_harness")
def test_a_regression_model_is_compressed_and_scored_by_the_users_metric(tmp_path):
    code, summary = _run(
        tmp_path,
        "tests.test_custom_tasks:regression_data",
        "tests.test_custom_tasks:regressor",
        "tests.test_custom_tasks:negative_mse",
        "tests.test_custom_tasks:mse_loss",
    )
    assert code in (0, 3) and summary["best"] is not None
    assert summary["baseline"]["accuracy"] < 0  # a negative MSE: no accuracy looks like it
    assert summary["best"]["compression"] > 1.0
    _check_metric_is_the_users(tmp_path, summary, regression_data, negative_mse)


@pytest.mark.usefixtures("prefect_harness")
def test_a_multilabel_model_is_compressed_and_scored_by_the_users_metric(tmp_path):
    code, summary = _run(
        tmp_path,
        "tests.test_custom_tasks:multilabel_data",
        "tests.test_custom_tasks:tagger",
        "tests.test_custom_tasks:label_accuracy",
        "tests.test_custom_tasks:bce_loss",
    )
    assert code in (0, 3) and summary["best"] is not None
    assert summary["best"]["compression"] > 1.0
    _check_metric_is_the_users(tmp_path, summary, multilabel_data, label_accuracy)


# ------------------------------------------------------------------- spec, preflight


def test_evaluate_makes_a_task_custom_and_preflight_accepts_float_targets(tmp_path):
    spec = spec_mod.parse(
        {
            "model": "tests.test_custom_tasks:regressor",
            "data": "tests.test_custom_tasks:regression_data",
            "evaluate": "tests.test_custom_tasks:negative_mse",
            "loss": "tests.test_custom_tasks:mse_loss",
            "target": {"compression": 2},
            "output": str(tmp_path / "out"),
            "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
        }
    )
    assert spec.task == "custom"
    preflight.check(spec)  # float targets, one output: fine for a custom task
    # Control: the same data and model as a classification job are refused, in one line.
    classification = spec_mod.parse(
        {**spec.to_dict(), "task": "classification", "evaluate": None, "loss": None}
    )
    with pytest.raises(preflight.PreflightError, match="labels are torch.float32"):
        preflight.check(classification)


def test_a_custom_task_names_importable_functions():
    with pytest.raises(spec_mod.SpecError, match="task custom needs evaluate"):
        spec_mod.parse({"task": "custom", "target": {"speedup": 2}})
    spec = spec_mod.parse({"evaluate": "tests.test_custom_tasks:nope", "target": {"speedup": 2}})
    with pytest.raises(preflight.PreflightError, match="evaluate 'tests.test_custom_tasks:nope'"):
        preflight.check_task(spec)
