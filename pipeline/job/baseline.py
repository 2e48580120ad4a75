"""The baseline: build or load the model, train it if it came without weights, re-estimate
its BatchNorm statistics, check it learnt something, save it as the artifact every
candidate starts from, and measure it once."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from learners.finetune import recalibrate_batchnorm_, train_
from learners.formats import export
from pipeline import measure
from pipeline.job.modelfile import save_baseline, source_model
from pipeline.job.preflight import check_baseline_learnt
from pipeline.job.settings import latency_settings, pretrain_settings, splits_for
from pipeline.job.task import task_for
from pipeline.sources.models import with_logits_output
from pipeline.spec import JobSpec


@dataclass
class Baseline:
    model_path: str
    onnx_path: str
    deployable_path: str
    accuracy: float
    latency_ms: float
    flops: int
    param_count: int
    bytes: int
    trained_here: bool
    pretrain_curve: dict[str, list[float]]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Baseline:
        """Also reads a ``baseline.json`` saved when the count was called ``params``."""
        fields = dict(data)
        older = fields.pop("params", None)
        fields.setdefault("param_count", older)
        return cls(**fields)


def prepare(spec: JobSpec, out_dir: Path, device: str = "cpu", log=print) -> Baseline:
    """Build (and train, without weights, on ``device``), save and measure the baseline."""
    torch.manual_seed(spec.seed)
    splits = splits_for(spec)
    m = spec.model
    model, has_weights = source_model(spec, splits.num_classes, splits.input_shape[0])
    # A model returning a dict, tuple or output object is wrapped to return its logits.
    model = with_logits_output(model, splits.example_inputs(), m.output)
    task = task_for(spec, splits.num_classes)
    # Page-locked batches on a GPU: the training loop copies them non-blocking.
    train_loader, val_loader, _ = splits.loaders(
        spec.finetune.batch_size, spec.seed, pin_memory=device.startswith("cuda")
    )
    curve: dict[str, list[float]] = {}
    if not has_weights and spec.finetune.pretrain_epochs > 0:
        log(
            f"training the baseline for {spec.finetune.pretrain_epochs} epochs (no weights "
            "given; each epoch's validation figure is before BatchNorm re-estimation)"
        )
        started = time.perf_counter()

        def progress(epoch: int, loss: float, val: float | None) -> None:
            log(f"  epoch {epoch + 1:>3}: loss {loss:.4f}  val accuracy {val:.4f}")

        curve = train_(
            model,
            train_loader,
            val_loader,
            pretrain_settings(spec),
            device=device,
            on_epoch=progress,
            task=task,
            log=log,
        )
        log(f"baseline trained in {time.perf_counter() - started:.0f} s")
    # Before anything is measured: a low-momentum BatchNorm (0.01, 0.0003 in published
    # mobile networks) lags far behind its weights, and loaded weights met other data.
    batches = spec.finetune.bn_recalibration_batches
    if batches and (used := recalibrate_batchnorm_(model, train_loader, batches, device)):
        curve["bn_recalibration_batches"] = [float(used)]
    model = model.to("cpu").eval()
    accuracy = task.measure(model, val_loader)
    check_baseline_learnt(spec, accuracy, task.chance, has_weights)
    example = splits.example_inputs()
    folder = out_dir / "baseline"
    model_path = save_baseline(model, folder)  # safetensors; the source is the architecture
    onnx_path = export.export_onnx(model, example, folder / "model.onnx")
    deployable = export.save_deployable(model, example, folder / "model")
    return Baseline(
        model_path=str(model_path),
        onnx_path=str(onnx_path),
        deployable_path=str(deployable),
        accuracy=accuracy,
        latency_ms=measure.latency_ms(model, example, latency_settings(spec), folder),
        flops=measure.count_flops(model, example),
        param_count=measure.count_params(model),
        bytes=measure.file_bytes(deployable),
        trained_here=not has_weights,
        pretrain_curve=curve,
    )
