"""The job specification: validated once, at the edge, from YAML or CLI flags.

Every field is checked here so a bad job fails before anything is trained or recorded,
with a message naming the field and what is allowed. ``JobSpec.to_dict()`` round-trips
and is what the flow logs to MLflow.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from learners import registry
from learners.base import RUNTIMES
from learners.chain import valid_chains, validate_chain
from learners.finetune import ADAMW_DEFAULTS, AUTOCASTS
from pipeline import jobyaml
from pipeline.measure.clocks import clock_problem
from pipeline.sources.zoo import names

DEVICES = ("auto", "cpu", "cuda")
_CUDA_INDEX = re.compile(r"^cuda:\d+$")
RUNNERS = ("threads", "dask")
TASKS = ("classification", "custom")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
DATA_SCHEMES = ("digits", "cifar10:<dir>", "imagefolder:<dir>", "package.module:callable")
# A job name becomes a folder under the output, an MLflow run and a registered model's
# name: one path component of portable characters, short enough for every file system.
NAME_MAX = 100
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class SpecError(ValueError):
    """A job spec that cannot run; the message names the field and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(_Strict):
    speedup: float | list[float] | None = Field(
        default=None,
        description="measured speedup to reach: baseline latency / candidate latency on "
        "`runtime` (a factor > 1), or a list of them (e.g. [1.5, 2, 3, 4]: the most "
        "accurate model at each, in one job); give this or `compression`",
    )
    compression: float | list[float] | None = Field(
        default=None,
        description="compression to reach: baseline deployable-file bytes / the candidate's "
        "(a factor > 1, or a list of them); give this or `speedup`",
    )
    runtime: str = Field(
        default="torch-cpu",
        description="where latency is measured: torch-cpu, onnxruntime-cpu, cuda (eager "
        "fp32) or cuda-graph (the forward captured once as a CUDA graph and replayed)",
    )
    max_accuracy_drop: float = Field(
        default=5.0,
        ge=0,
        le=100,
        description="validation accuracy, in points, a candidate may lose against the "
        "baseline and still count (more: infeasible, whatever its speed); for a custom "
        "`evaluate` metric, hundredths of its value (5 = 0.05). Default 5: a guard against "
        "collapse above the noise of a small validation split, not a quality bar",
    )
    # Further runtimes on which a candidate must also reach the speedup to count as
    # meeting the target (e.g. train on torch, ship on onnxruntime).
    also_on: list[str] = Field(
        default_factory=list,
        description="further runtimes on which the speedup must also hold (speedup targets only)",
    )
    onnx_not_slower: bool = Field(
        default=True,
        description="a speedup candidate must not run slower than the baseline on "
        "onnxruntime-cpu, where its deployable ONNX file runs (checked only when torch-cpu "
        "is a target runtime and onnxruntime-cpu is not already one: one quick timing, a "
        "speedup under 1 there is infeasible at any target; nothing for GPU runtimes and "
        "compression targets); the two-fidelity screening then skips settings predicted "
        "well below 1x there (under `screening.skip_below`; channel pruning's latency "
        "table, measured on onnxruntime-cpu too); false: not checked",
    )

    @model_validator(mode="after")
    def _one_target(self) -> Target:
        given = [k for k in ("speedup", "compression") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of target.speedup or target.compression "
                f"(got {', '.join(given) or 'neither'})"
            )
        given_value = getattr(self, given[0])
        values = given_value if isinstance(given_value, list) else [given_value]
        if not values:
            raise ValueError(f"target.{given[0]} is an empty list: give at least one factor > 1")
        if len(set(values)) != len(values):
            raise ValueError(f"target.{given[0]} lists a factor twice: {values}")
        for value in values:
            if not math.isfinite(value):
                raise ValueError(
                    f"target.{given[0]} must be a finite number > 1, got {value}: no model is "
                    "infinitely faster or smaller"
                )
            if not value > 1.0:
                raise ValueError(f"target.{given[0]} must be > 1 (a factor), got {value}")
        for runtime in (self.runtime, *self.also_on):
            if runtime not in RUNTIMES:
                raise ValueError(f"target runtime {runtime!r} is unknown; allowed: {RUNTIMES}")
        if self.also_on and self.speedup is None:
            raise ValueError("target.also_on applies to speedup targets only")
        return self

    @property
    def runtimes(self) -> list[str]:
        """The declared runtime first, then the others, without repeats."""
        return list(dict.fromkeys([self.runtime, *self.also_on]))

    @property
    def kind(self) -> str:
        return "speedup" if self.speedup is not None else "compression"

    @property
    def checks_onnx(self) -> bool:
        """Whether candidates are also timed on onnxruntime-cpu, where the deployable ONNX
        file runs (``onnx_not_slower``): speedup targets on torch-cpu whose runtimes do not
        already include onnxruntime-cpu."""
        runtimes = self.runtimes
        return (
            self.onnx_not_slower
            and self.kind == "speedup"
            and "torch-cpu" in runtimes
            and "onnxruntime-cpu" not in runtimes
        )

    @property
    def values(self) -> list[float]:
        """Every factor asked for, smallest first (one for a single target)."""
        given = self.speedup if self.speedup is not None else self.compression
        factors = given if isinstance(given, list) else [given]
        return sorted(float(v) for v in factors if v is not None)

    @property
    def value(self) -> float:
        """The target (for a list: its smallest factor, the first one reached)."""
        return self.values[0]

    @property
    def is_front(self) -> bool:
        """Whether the job asks for several targets (a Pareto front) in one run."""
        return isinstance(self.speedup if self.speedup is not None else self.compression, list)


class Budget(_Strict):
    rounds: int | None = Field(default=8, ge=1, description="candidates to evaluate at most")
    minutes: float | None = Field(
        default=None, gt=0, description="time limit: no round starts once it is spent"
    )
    patience: int = Field(default=4, ge=1, description="rounds without gain once target is met")
    batch: int = Field(default=1, ge=1, description="candidates proposed and run together")
    screen: int | None = Field(
        default=None,
        ge=0,
        description="screenings: settings scored cheaply (no fine-tune: BatchNorm "
        "re-estimated, validation subset, latency measured) to pick which get a full "
        "evaluation; 0 = off (every proposal is fine-tuned); default: 15 per round",
    )
    initial_points: int | None = Field(
        default=None,
        ge=1,
        description="random proposals before the optimiser follows its GP surrogate "
        "(default: rounds / 3, between 2 and 5)",
    )

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if self.rounds is None and self.minutes is None:
            raise ValueError("budget needs rounds or minutes (or both)")
        return self


class Finetune(_Strict):
    pretrain_epochs: int = Field(
        default=15, ge=0, description="epochs to train the baseline when it has no weights"
    )
    epochs: int = Field(default=4, ge=0, description="fine-tuning epochs for each candidate")
    lr: float = Field(
        default=0.02, gt=0, description="fine-tuning learning rate (SGD, cosine schedule)"
    )
    pretrain_lr: float = Field(
        default=0.1,
        gt=0,
        description="learning rate for training the baseline (`pretrain_epochs`; only when "
        "the model comes without weights)",
    )
    weight_decay: float = Field(
        default=5e-4, ge=0, description="SGD weight decay, for pretraining and fine-tuning"
    )
    batch_size: int = Field(
        default=64, ge=1, description="training batch size, for pretraining and fine-tuning"
    )
    warmup: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="share of the training steps over which the learning rate rises "
        "linearly before its cosine decay, for pretraining and fine-tuning",
    )
    max_retries: int = Field(
        default=2,
        ge=0,
        description="restarts, each at 0.3x the learning rate, when training diverges "
        "(non-finite or exploding loss, accuracy stuck at chance); logged and recorded",
    )
    bn_recalibration_batches: int = Field(
        default=200,
        ge=0,
        description="training batches over which BatchNorm statistics are re-estimated "
        "for the baseline and every candidate before accuracy is measured; 0 = off",
    )
    autocast: str = Field(
        default="none",
        description="mixed precision while training on a CUDA device: bf16 (torch.autocast; "
        "weights and optimiser stay fp32) or none; CPU training stays fp32",
    )
    optimizer: typing.Literal["sgd", "adamw"] = Field(
        default="sgd",
        description="sgd (momentum 0.9, Nesterov: convolutional networks) or adamw "
        "(pretrained transformers); with adamw, lr, pretrain_lr and weight_decay left "
        f"unset default to {ADAMW_DEFAULTS}",
    )

    @model_validator(mode="before")
    @classmethod
    def _adamw_defaults(cls, data: Any) -> Any:
        # The SGD defaults (lr 0.02, pretrain_lr 0.1) would wreck a pretrained encoder
        # under AdamW; values the user set are kept.
        if isinstance(data, dict) and data.get("optimizer") == "adamw":
            return {**ADAMW_DEFAULTS, **data}
        return data

    @field_validator("autocast")
    @classmethod
    def _known_autocast(cls, v: str) -> str:
        if v not in AUTOCASTS:
            raise ValueError(f"finetune.autocast {v!r} is unknown; allowed: {AUTOCASTS}")
        return v


class Distillation(_Strict):
    enabled: bool = Field(default=False, description="distil every fine-tune from a teacher")
    temperature: float = Field(default=4.0, gt=0, description="softmax temperature T")
    alpha: float = Field(
        default=0.7,
        ge=0,
        le=1,
        description="weight of the soft (teacher) loss; cross-entropy gets 1 - alpha",
    )
    search: bool = Field(
        default=False,
        description="let the optimiser choose whether to distil (per setting, so per chain) "
        "and tune temperature and alpha; turns `enabled` on",
    )
    teacher: str | None = Field(
        default=None, description="a model source or file; the baseline when empty"
    )

    @model_validator(mode="before")
    @classmethod
    def _search_enables(cls, data: Any) -> Any:
        """``search: true`` alone turns distillation on (the choice needs a teacher); with
        ``enabled: false`` it contradicts itself. Before, it was silently ignored."""
        if isinstance(data, dict) and data.get("search"):
            if data.get("enabled", True) is False:
                raise ValueError(
                    "distillation.search: true needs distillation.enabled (the search "
                    "chooses per setting whether to distil); drop enabled: false"
                )
            data = {**data, "enabled": True}
        return data


class Measure(_Strict):
    batch_size: int = Field(default=32, ge=1, description="batch size latency is timed at")
    threads: int = Field(default=1, ge=1, description="intra-op threads while timing")
    warmup: int = Field(default=3, ge=0, description="untimed runs before timing")
    repeats: int = Field(
        default=15,
        ge=3,
        description="timed pairs to start with (baseline and candidate, interleaved)",
    )
    max_repeats: int = Field(
        default=60,
        ge=0,
        description="timed pairs at most: more are added while the speedup's 95% interval "
        "is wider than `tolerance` (0 = exactly `repeats`)",
    )
    tolerance: float = Field(
        default=0.03,
        gt=0,
        lt=1,
        description="relative half-width of the speedup's 95% interval to stop timing at",
    )
    pool: str | None = Field(
        default=None,
        description="a folder where timing pairs are pooled across jobs (identical "
        "architectures on the same runtime, batch and threads then share one growing "
        "measurement on this machine); default: the job run's own `measurements/`",
    )
    clock: typing.Literal["auto", "wall", "cpu"] = Field(
        default="auto",
        description="what times a run: `cpu` (the timing thread's CPU time, which leaves out "
        "time taken by other processes; torch-cpu and onnxruntime-cpu with threads: 1 "
        "only), `wall`, or `auto`: cpu where valid, else wall (GPU runtimes: wall)",
    )
    pin: bool = Field(
        default=False,
        description="keep the timing thread on the core it runs on while it times (steadier "
        "ratios under load in BENCHMARKS.md 'Timing under load'; off by default: jobs or "
        "rounds timing at once may be pinned to one core together)",
    )

    @model_validator(mode="after")
    def _cap_above_start(self) -> Measure:
        if self.max_repeats and self.max_repeats < self.repeats:
            raise ValueError(
                f"measure.max_repeats ({self.max_repeats}) is below measure.repeats "
                f"({self.repeats}): the cap must be at least the start, or 0 for no extra pairs"
            )
        return self


class Screening(_Strict):
    bn_samples: int = Field(
        default=256, ge=0, description="training samples BatchNorm is re-estimated on per screening"
    )
    val_samples: int = Field(
        default=512,
        ge=1,
        description="validation samples (a fixed subset) a screening is scored on",
    )
    skip_below: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="a setting whose predicted speedup is below this share of the smallest "
        "target is not built (the latency table's prediction; speedup targets only), nor "
        "one predicted below this speedup on onnxruntime-cpu (`target.onnx_not_slower`)",
    )
    repeats: int = Field(
        default=6, ge=3, description="timed pairs per screening (pooled for identical shapes)"
    )
    train_steps: int = Field(
        default=0,
        ge=0,
        description="SGD steps (of finetune.batch_size training samples, at finetune.lr) "
        "before a screening is scored; 0 = BatchNorm re-estimation alone (EagleEye)",
    )


class Data(_Strict):
    source: str = Field(
        default="digits",
        description="digits, cifar10:<dir>, imagefolder:<dir> or package.module:callable "
        "(returning train, val, test DataLoaders or a dict of them); a string `data` is "
        "this field",
    )
    image_size: int | None = Field(
        default=None,
        ge=4,
        description="square size images are resized to (default: 32; cifar10 files are "
        "32x32 already); not used by package.module:callable sources",
    )
    val_fraction: float = Field(
        default=0.2,
        gt=0,
        lt=1,
        description="share of the training data carved out (stratified) for the search reward",
    )
    test_fraction: float = Field(
        default=0.2,
        gt=0,
        lt=1,
        description="share held out for the final report when the source has no test split",
    )
    limit: int | None = Field(default=None, ge=10, description="use at most this many samples")
    channels: int | None = Field(
        default=None,
        description="convert images to this many channels: 3 (grey to RGB, repeated) or 1 "
        "(RGB to grey, ITU-R 601 luma); default: as the source yields them (digits: 1)",
    )

    @field_validator("channels")
    @classmethod
    def _known_channels(cls, v: int | None) -> int | None:
        if v not in (None, 1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {v}")
        return v

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        if v == "digits" or _FACTORY.match(v):
            return v
        scheme, _, path = v.partition(":")
        if scheme in ("cifar10", "imagefolder") and path:
            return v
        raise ValueError(f"data source {v!r} is not one of {DATA_SCHEMES}")


class Model(_Strict):
    source: str = Field(
        default="resnet20",
        description="zoo name, package.module:factory, model file, s3:// URI or "
        "models:/<name>/<version|latest>; a string `model` is this field. A factory is "
        "called with `options` as keyword arguments, plus `num_classes` (largest label + 1) "
        "and `in_channels` (channels of one input) only where its signature names them "
        "and `options` does not set them",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments for the zoo model or factory"
    )
    weights: str | None = Field(
        default=None,
        description="state dict (.safetensors or torch file, local or s3://) for the built "
        "model; without it the baseline is trained first",
    )
    output: str | int = Field(
        default="auto",
        description="which part of the model's output holds the logits: auto (the output "
        "itself if a tensor, else `.logits` / ['logits'] / the only tensor of a tuple), a "
        "key or attribute name, or a tuple index",
    )

    @field_validator("source")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v in names() or _FACTORY.match(v) or v.startswith(("s3://", "models:/")):
            return v
        if Path(v).is_file():
            return v
        raise ValueError(
            f"model {v!r} is not a zoo model ({', '.join(names())}), "
            "a 'package.module:factory', an existing model file, an s3:// URI "
            "or a registered MLflow model (models:/<name>/<version|latest>)"
        )


class Tracking(_Strict):
    uri: str = Field(default="sqlite:///mlflow.db", description="MLflow tracking URI")
    experiment: str = Field(default="compressflow", description="MLflow experiment name")
    register_model: bool = Field(
        default=True, description="register the winner in the MLflow model registry"
    )


class Runner(_Strict):
    """Where a batch of candidates runs: a thread pool, or Dask worker processes."""

    kind: str = Field(default="threads", description="threads or dask")
    workers: int | None = Field(
        default=None,
        ge=1,
        description="threads, or local Dask worker processes (default: budget.batch)",
    )
    address: str | None = Field(
        default=None, description="an existing Dask scheduler, e.g. tcp://10.0.0.5:8786"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Runner:
        if self.kind not in RUNNERS:
            raise ValueError(f"runner.kind {self.kind!r} is unknown; allowed: {RUNNERS}")
        if self.address and self.kind != "dask":
            raise ValueError("runner.address names a Dask scheduler: it needs runner.kind dask")
        if self.address and self.workers:
            raise ValueError(
                "give runner.workers (a local Dask cluster) or runner.address "
                "(an existing scheduler's workers), not both"
            )
        return self


class JobSpec(_Strict):
    name: str | None = Field(
        default=None,
        description="job name: the output folder, MLflow parent run and registered model "
        "(default: derived from model and target)",
    )
    model: Model = Field(
        default_factory=Model, description="the model to compress: a source, or these fields"
    )
    data: Data = Field(
        default_factory=Data, description="training and evaluation data: a source, or these fields"
    )
    target: Target = Field(description="what the compressed model must reach, and where")
    learners: list[str] | list[list[str]] | typing.Literal["auto"] = Field(
        default_factory=lambda: ["channel"],
        min_length=1,
        description="compression learners: one chain applied in order ('channel,int8'), "
        "alternative chains the search chooses among ([[channel], [channel, int8]], or "
        "'channel;channel,int8'), or auto (every valid chain, see auto_chain_length)",
    )
    auto_chain_length: int = Field(
        2, ge=1, le=3, description="learners: auto builds chains of up to this many learners"
    )
    learner_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="each learner's config fields, by learner name (docs/learners.md)",
    )
    budget: Budget = Field(default_factory=Budget, description="when the search stops")
    finetune: Finetune = Field(
        default_factory=Finetune, description="baseline training and candidate fine-tuning"
    )
    distillation: Distillation = Field(
        default_factory=Distillation, description="knowledge distillation while fine-tuning"
    )
    screening: Screening = Field(
        default_factory=Screening, description="how a setting is scored cheaply (see budget.screen)"
    )
    measure: Measure = Field(
        default_factory=Measure, description="how latency is timed (same for every candidate)"
    )
    tracking: Tracking = Field(default_factory=Tracking, description="where MLflow records the job")
    output: str = Field(
        default="compressflow-out",
        description="folder or s3:// URI; results go to <output>/<job name>",
    )
    device: str = Field(
        default="cpu", description="where training runs: auto, cpu, cuda or cuda:<index>"
    )
    runner: Runner = Field(default_factory=Runner, description="where a batch of candidates runs")
    seed: int = Field(
        default=0,
        description="seed for the splits, baseline training and optimiser; round i "
        "fine-tunes with seed + i",
    )
    trust_pickled_models: bool = Field(
        default=False,
        description="load pickled full models (torch.save(model) files, for the model "
        "source and the teacher), which run any code they name; without it only "
        "torch.export (.pt2), ONNX and safetensors weights with a factory load",
    )
    allow_untrained_baseline: bool = Field(
        default=False,
        description="go on with a classification baseline within 5 points of chance "
        "(1/classes) instead of stopping before the search (exit 2)",
    )
    force_search: bool = Field(
        default=False,
        description="search even when calibration shows the channel learner's largest "
        "uniform ratio falls short of the target (otherwise the job stops before the "
        "search, exit 3)",
    )
    task: str = Field(
        default="classification",
        description="classification (top-1 accuracy, cross-entropy on integer labels) or "
        "custom (your `evaluate`, and `loss` or cross-entropy); `evaluate` implies custom",
    )
    evaluate: str | None = Field(
        default=None,
        description="package.module:fn(model, loader, device) -> float, higher is better: "
        "the metric for the search reward, the accuracy floor and the report",
    )
    loss: str | None = Field(
        default=None,
        description="package.module:fn(model, batch) -> scalar tensor: the training loss "
        "for pretraining and fine-tuning (distillation adds output matching); default "
        "cross-entropy",
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str | None) -> str | None:
        if v is not None:
            check_name(v)
        return v

    @field_validator("model", "data", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"source": v} if isinstance(v, str) else v

    @model_validator(mode="before")
    @classmethod
    def _evaluate_implies_custom(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("evaluate") and "task" not in data:
            return {**data, "task": "custom"}
        return data

    @model_validator(mode="after")
    def _task(self) -> JobSpec:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is unknown; allowed: {TASKS}")
        for key in ("evaluate", "loss"):
            value = getattr(self, key)
            if value is not None and not _FACTORY.match(value):
                raise ValueError(f"{key} {value!r} must look like package.module:function")
        if self.task == "custom" and not self.evaluate:
            raise ValueError("task custom needs evaluate: package.module:fn (its metric)")
        if self.task == "classification" and self.evaluate:
            raise ValueError(
                "evaluate replaces classification's top-1 accuracy: set task: custom "
                "(or leave task out)"
            )
        return self

    @field_validator("learners", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return split_chains(v)

    @field_validator("learners")
    @classmethod
    def _known_learners(cls, v: list[str] | list[list[str]] | str) -> Any:
        known = registry.known()
        for name in {n for chain in _as_chains(v) for n in chain}:
            if name not in known:
                raise ValueError(f"unknown learner {name!r}; known learners: {', '.join(known)}")
        chains = [",".join(c) for c in _as_chains(v)]
        if repeated := sorted({c for c in chains if chains.count(c) > 1}):
            raise ValueError(f"chain {repeated[0]} is listed more than once")
        return v

    @field_validator("learner_options")
    @classmethod
    def _typed_learner_options(
        cls, v: dict[str, dict[str, Any]], info: ValidationInfo
    ) -> dict[str, dict[str, Any]]:
        given = info.data.get("learners") or []
        used = {n for chain in _as_chains(given) for n in chain} if given != "auto" else None
        for name in v:
            if used is not None and name not in used:
                raise ValueError(f"names {name!r}, which is not in learners {given}")
        return {name: learner_options(name, options) for name, options in v.items()}

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in DEVICES and not _CUDA_INDEX.match(v):
            raise ValueError(f"device {v!r} is unknown; allowed: {DEVICES} or 'cuda:<index>'")
        return v

    @model_validator(mode="after")
    def _chain_is_valid(self) -> JobSpec:
        if isinstance(self.learners, str):  # "auto": expanded once, here, into its chains
            chains = valid_chains(
                self.target.runtimes, self.target.kind, self.learner_options, self.auto_chain_length
            )
            if not chains:
                raise ValueError(
                    f"learners: auto found no chain of up to {self.auto_chain_length} "
                    f"learners that gives {self.target.kind} on {', '.join(self.target.runtimes)}"
                )
            object.__setattr__(self, "learners", chains[0] if len(chains) == 1 else chains)
        for chain in self.chains:
            _check_chain(chain, self.target.runtimes, self.learner_options)
        return self

    @property
    def chains(self) -> list[list[str]]:
        """The chains the job searches among: one for an ordinary job."""
        return _as_chains(self.learners)

    @property
    def metric_name(self) -> str:
        """``accuracy``, or a custom task's metric: its evaluate function's name."""
        return self.evaluate.rpartition(":")[2] if self.evaluate else "accuracy"

    @property
    def learners_text(self) -> str:
        """The chain ("channel, int8") or the alternatives ("channel; int8; channel,int8")."""
        chains = self.chains
        if len(chains) == 1:
            return ", ".join(chains[0])
        return "; ".join(",".join(c) for c in chains)

    @property
    def chain(self) -> list[str]:
        """The job's one chain; a job with alternatives has none until one is picked
        (``pipeline.job.chains.for_chain``)."""
        chains = self.chains
        if len(chains) != 1:
            raise ValueError(f"this job searches {len(chains)} chains: pick one first")
        return chains[0]

    @model_validator(mode="after")
    def _clock_fits_runtimes(self) -> JobSpec:
        for runtime in self.target.runtimes:
            if problem := clock_problem(self.measure.clock, runtime, self.measure.threads):
                raise ValueError(f"measure.clock: {problem}")
        return self

    @property
    def job_name(self) -> str:
        """The name given, or one made of the model, the learners and the target (so jobs
        with other learners on the same model keep their own folders and records)."""
        if self.name:
            return self.name
        t = self.target
        chains = self.chains
        method = "-".join(chains[0]) if len(chains) == 1 else f"{len(chains)}-chains"
        name = f"{_model_slug(self.model.source)}-{method}-{t.kind}{t.value:g}"
        return _UNSAFE.sub("-", name).strip("-.")[:NAME_MAX]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def check_name(name: str, what: str = "name") -> None:
    """A name that becomes one folder (or file) under the output: ``ValueError`` naming
    the rule it breaks."""
    if not name:
        raise ValueError(f"{what} is empty: give a job name such as resnet20-2x")
    if len(name) > NAME_MAX:
        raise ValueError(
            f"{what} is {len(name)} characters long: at most {NAME_MAX} (it names a folder)"
        )
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(
            f"{what} {name!r} is not one path component: it names a folder under the "
            "output, so it may hold no '/' or '\\' and may not be '.' or '..'"
        )
    if not _NAME.match(name):
        raise ValueError(
            f"{what} {name!r} may hold only letters, digits, '.', '_' and '-', and must "
            "start with a letter or digit"
        )


def split_chains(v: Any) -> Any:
    """``learners`` as given -> one chain (a list of names), several (a list of lists; one
    listed alone is that chain), or "auto". A string: "auto", "a,b" (one chain) or
    "a;b,c" (alternatives)."""
    if isinstance(v, str):
        if v.strip() == "auto":
            return "auto"
        parts = [[n.strip() for n in part.split(",") if n.strip()] for part in v.split(";")]
        v = [p for p in parts if p] if ";" in v else (parts[0] if parts else [])
    if isinstance(v, list | tuple) and v == ["auto"]:
        return "auto"
    if isinstance(v, list | tuple) and v and all(isinstance(c, list | tuple) for c in v):
        chains = [split_chains(c) if isinstance(c, str) else list(c) for c in v]
        return chains[0] if len(chains) == 1 else chains
    return v


def _as_chains(v: Any) -> list[list[str]]:
    if isinstance(v, str):  # "auto", not yet expanded
        return []
    if v and isinstance(v[0], list):
        return [list(c) for c in v]
    return [list(v)]


def _model_slug(source: str) -> str:
    """The short model part of a default job name: a factory's function, a registered
    model's name, a file's stem, a zoo name."""
    if source.startswith("models:/"):
        return source.removeprefix("models:/").split("/")[0] or "model"
    if _FACTORY.match(source):
        return source.rsplit(":", 1)[1]
    return Path(source).stem or "model"


def _check_chain(names: list[str], runtimes: list[str], options: dict[str, dict[str, Any]]) -> None:
    """Chain rules that the learners themselves declare (learners.chain), checked with
    the options the job will build them with, on every runtime the target names."""
    for runtime in runtimes:
        validate_chain(list(names), runtime=runtime, options=options)


def learner_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """A learner's options checked against its config (a dataclass): each key must be one
    of its fields and each value of that field's type (converted where pydantic's lax
    mode does: "0.5" -> 0.5, a list -> a tuple), then the learner is built with them so
    its config's own checks (ranges, choices) run here, at spec load."""
    config = _config_type(name)
    if config is not None:
        fields = [f.name for f in dataclasses.fields(config) if f.init]
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise ValueError(
                f"{name}.{unknown[0]} is not an option of learner {name!r}; "
                f"its options: {', '.join(fields)}"
            )
        try:
            hints = typing.get_type_hints(config)
        except Exception:  # noqa: BLE001 - an unresolvable annotation: the learner checks it
            hints = {}
        typed = {}
        for key, value in options.items():
            hint = hints.get(key)
            try:
                typed[key] = value if hint is None else TypeAdapter(hint).validate_python(value)
            except ValidationError as err:
                why = err.errors()[0]["msg"]
                raise ValueError(
                    f"{name}.{key} must be {_type_name(hint)}, got {value!r} ({why})"
                ) from None
        options = typed
    try:
        registry.get(name, **options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} options {options}: {err}") from None
    return options


def _config_type(name: str) -> type | None:
    try:
        config = getattr(registry.get(name), "config", None)
    except Exception:  # noqa: BLE001 - a learner that cannot be built by default
        return None
    return type(config) if dataclasses.is_dataclass(config) else None


def _type_name(hint: Any) -> str:
    names = {float: "a number", int: "a whole number", bool: "true or false", str: "a string"}
    if hint in names:
        return names[hint]
    return "of type " + str(hint).replace("typing.", "").replace("NoneType", "null")


def _explain(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "job"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see docs/jobs.md 'Job spec fields')"
        elif not isinstance(e.get("input"), dict) and e["type"] != "value_error":
            msg = f"{msg} (got {e.get('input')!r})"
        lines.append(f"{where}: {msg}")
    return "invalid job spec:\n  " + "\n  ".join(lines)


def parse(data: dict[str, Any]) -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_explain(err)) from None


def load(path: str | Path) -> JobSpec:
    return parse(load_raw(path))


def load_raw(path: str | Path) -> dict[str, Any]:
    """A job file's mapping as written, not yet validated (flags may complete it)."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"job file {path} is a directory: give the job's YAML file")
    if not path.is_file():
        raise SpecError(f"job file {path} does not exist")
    if path.stat().st_size > jobyaml.MAX_BYTES:
        raise SpecError(
            f"job file {path} is {path.stat().st_size:,} bytes: a job file is a few KB "
            f"(at most {jobyaml.MAX_BYTES:,}); is it the right file?"
        )
    try:
        data = jobyaml.load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"job file {path} cannot be read as text: {err}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"job file {path} is not valid YAML: {err}") from None
    except jobyaml.JobYamlError as err:
        raise SpecError(f"job file {path}: {err}") from None
    if not isinstance(data, dict):
        raise SpecError(f"job file {path} must hold a mapping at the top level")
    return data


# Sections a job file may give as a plain string: ``model: resnet32`` is its source.
SHORTHANDS = ("model", "data")


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` (e.g. from CLI flags) into ``base`` (e.g. from YAML): an
    override completes the file and replaces only the fields it names (``--weights``
    refines ``model: resnet32``, it does not bring back the default model)."""
    expanded = {
        k: {"source": v} if k in SHORTHANDS and isinstance(v, str) else v for k, v in base.items()
    }
    return _merge(expanded, overrides)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
