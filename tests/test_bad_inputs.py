"""The bad-input catalogue (issue 12, item 8): each case runs the real CLI
(``python -m pipeline run ...`` in a subprocess) and must end with its exit code (2 for
bad input, 3 for a target the calibration proves unreachable), one message naming the
problem, no traceback, and nothing that spoils the store or the output root for the next
job: every case shares one sqlite store and one output root, and a good tiny job runs on
both at the end.

Most cases fail in the spec or in preflight, within seconds; they run a few at a time in
one module fixture (each CLI start imports torch), and each test reads its case's result.
The callables below are the cases' model factories and data sources
(``tests.test_bad_inputs:<name>``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import TINY_JOB, TinyNet

ROOT = Path(__file__).resolve().parents[1]
HERE = "tests.test_bad_inputs"
CASE_TIMEOUT_S = 150
PARALLEL = 3
# The module's fixture runs every case (over a hundred CLI starts, each importing torch)
# before its first test: that test's limit must cover them all on a shared, loaded machine.
pytestmark = pytest.mark.timeout(2400)


# --- model factories and data sources the cases name -------------------------------


def raising_factory(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    raise RuntimeError("factory exploded on purpose")


def two_class_net(**_: object) -> nn.Module:
    """A factory that ignores num_classes: two logits whatever the data."""
    return TinyNet(num_classes=2, in_channels=1, width=8)


class _Features(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.net = TinyNet(num_classes, in_channels, width=8)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.net(x)
        return {"features": y, "other": y * 2}  # two tensors, neither called logits


def no_logits_net(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return _Features(num_classes, in_channels)


def _loaders(x: torch.Tensor, y: torch.Tensor, cuts=((0, 60), (60, 80), (80, 100))):
    return tuple(DataLoader(TensorDataset(x[a:b], y[a:b]), batch_size=16) for a, b in cuts)


def _images(n: int = 100, size: int = 8) -> torch.Tensor:
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(0))


def exiting_factory(**_: object) -> nn.Module:
    sys.exit(0)


def exiting_factory_message(**_: object) -> nn.Module:
    sys.exit("licence server unreachable (on purpose)")


def hard_exiting_factory(**_: object) -> nn.Module:
    os._exit(7)


def interrupting_factory(**_: object) -> nn.Module:
    raise KeyboardInterrupt


def exiting_evaluate(model, loader, device) -> float:
    sys.exit(0)


def interrupting_loss(model, batch) -> torch.Tensor:
    raise KeyboardInterrupt


def exiting_data():
    sys.exit(3)


def hard_exiting_data():
    os._exit(0)


def raising_data():
    raise OSError("the dataset server is down (on purpose)")


def empty_val_data():
    x, y = _images(), torch.arange(100) % 2
    return _loaders(x, y, cuts=((0, 80), (80, 80), (80, 100)))


def negative_label_data():
    return _loaders(_images(), torch.arange(100) % 3 - 1)  # -1, 0, 1


def float_label_data():
    return _loaders(_images(), (torch.arange(100) % 2).float() + 0.5)


def one_class_data():
    return _loaders(_images(), torch.zeros(100, dtype=torch.long))


def val_label_out_of_range_data():
    """Train and test hold classes 0 and 1; validation holds a class 7 nobody trained."""
    y = torch.arange(100) % 2
    y[60:80] = 7
    return _loaders(_images(), y)


def mixed_shape_data():
    """Train is 8x8, validation and test 6x6: batches of one source must share a shape."""
    x8, x6, y = _images(60), _images(40, size=6), torch.arange(100) % 2
    train = DataLoader(TensorDataset(x8, y[:60]), batch_size=16)
    val = DataLoader(TensorDataset(x6[:20], y[60:80]), batch_size=16)
    test = DataLoader(TensorDataset(x6[20:], y[80:]), batch_size=16)
    return train, val, test


def flat_data():
    """Vectors of 64 features, not images: a conv model cannot take them."""
    return _loaders(_images().flatten(1), torch.arange(100) % 2)


def nan_data():
    x = _images()
    x[70, 0, 3, 3] = float("nan")  # one pixel of one validation sample
    return _loaders(x, torch.arange(100) % 2)


def inf_data():
    x = _images()
    x[5, 0, 0, 0] = float("inf")
    return _loaders(x, torch.arange(100) % 2)


class _Records(torch.utils.data.Dataset):
    def __init__(self, n: int, shape: str) -> None:
        self.x, self.y, self.shape = _images(n), torch.arange(n) % 2, shape

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        if self.shape == "dict":
            return {"image": self.x[i], "label": self.y[i]}
        return self.x[i], self.y[i], i  # (x, y, extra)


def dict_sample_data():
    return tuple(DataLoader(_Records(n, "dict"), batch_size=16) for n in (60, 20, 20))


def triple_sample_data():
    return tuple(DataLoader(_Records(n, "triple"), batch_size=16) for n in (60, 20, 20))


def empty_train_data():
    x, y = _images(), torch.arange(100) % 2
    return _loaders(x, y, cuts=((0, 0), (0, 50), (50, 100)))


class _NanNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = TinyNet(10, 1, width=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * float("nan")


def nan_output_net(**_: object) -> nn.Module:
    return _NanNet()


def not_loaders_data():
    return [1, 2, 3]


# Nine levels of nine aliases: 9**9 strings once expanded.
LAUGHS = (
    "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9))
    + "target: {speedup: 2}\n"
)


# --- the cases ---------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    fragment: str  # in stderr + stdout, case-insensitive
    code: int = 2
    files: tuple[tuple[str, str], ...] = ()  # (name, YAML text) written under the case root
    gpu_ok: bool = True  # False: only meaningful where torch sees no GPU
    drop: tuple[str, ...] = ()  # common flags (each with its value) this case leaves out


def yaml_case(id: str, text: str, fragment: str, *extra: str, drop: tuple[str, ...] = ()) -> Case:
    args = ("--job", "{root}/" + id + ".yaml", *extra)
    return Case(id, args, fragment, files=((id, text),), drop=drop)


CASES = [
    # spec: the file, its keys and values, the chain, the target
    yaml_case("yaml-syntax", "target: [speedup: 2\n", "not valid YAML"),
    yaml_case("yaml-not-mapping", "- a\n- b\n", "mapping at the top level"),
    yaml_case("unknown-key", "target: {speedup: 2}\nbogus: 1\n", "bogus: unknown key"),
    yaml_case("unknown-nested-key", "target: {speedup: 2, sped: 3}\n", "target.sped"),
    yaml_case(
        "wrong-type", "target: {speedup: 2}\nfinetune: {weight_decay: lots}\n", "weight_decay"
    ),
    yaml_case("both-targets", "target: {speedup: 2, compression: 2}\n", "exactly one"),
    Case("job-file-missing", ("--job", "{root}/nope.yaml"), "does not exist"),
    Case("no-target", ("--target-speedup", None), "got neither"),  # type: ignore[arg-type]
    Case("target-below-one", ("--target-speedup", "0.5"), "must be > 1"),
    Case("target-inf", ("--target-speedup", "inf"), "finite"),
    yaml_case("target-nan", "target: {compression: .nan}\n", "finite"),
    Case("negative-rounds", ("--rounds", "-1"), "budget.rounds"),
    Case("zero-lr", ("--lr", "0"), "finetune.lr"),
    Case("zero-measure-batch", ("--measure-batch", "0"), "measure.batch_size"),
    Case("tiny-data-limit", ("--data-limit", "3"), "data.limit"),
    Case("unknown-learner", ("--learners", "bogus"), "unknown learner 'bogus'"),
    Case("bad-chain-order", ("--learners", "int8,channel"), "cannot follow"),
    Case("repeated-learner", ("--learners", "channel,channel"), "more than once"),
    Case("int8-on-torch-cpu", ("--learners", "channel,int8"), "runs only on"),
    Case("unknown-runtime", ("--runtime", "tpu"), "'tpu' is unknown"),
    Case("unknown-device", ("--device", "tpu"), "device 'tpu' is unknown"),
    Case("unknown-data-scheme", ("--data", "ftp"), "data source 'ftp'"),
    Case("learner-option-unknown", ("--learner-option", "channel.bogus=1"), "max_ratio"),
    Case("learner-option-type", ("--learner-option", "channel.max_ratio=abc"), "max_ratio"),
    Case("learner-option-range", ("--learner-option", "channel.max_ratio=1.5"), "max_ratio"),
    Case("learner-option-choice", ("--learner-option", "channel.granularity=row"), "'stage'"),
    Case("learner-option-elsewhere", ("--learner-option", "int8.x=1"), "not in learners"),
    Case("learner-option-shape", ("--learner-option", "channel=1"), "NAME.KEY=VALUE"),
    Case("model-option-shape", ("--model-option", "width"), "KEY=VALUE"),
    # model: source, factory, options, weights, output
    Case("unknown-zoo-model", ("--model", "resnet999"), "not a zoo model"),
    Case("factory-not-importable", ("--model", "tests.nowhere:net"), "cannot be imported"),
    Case("factory-raises", ("--model", f"{HERE}:raising_factory"), "exploded on purpose"),
    Case("factory-not-module", ("--model", "tests.helpers:not_a_module"), "not an nn.Module"),
    Case("unknown-model-option", ("--model-option", "bogus=1"), "bogus"),
    Case("zoo-unknown-option", ("--model", "resnet20", "--model-option", "bogus=1"), "bogus"),
    Case("weights-missing", ("--weights", "{root}/nope.pt"), "nope.pt"),
    Case("weights-truncated", ("--weights", "{root}/truncated.pt"), "truncated.pt"),
    Case("weights-not-fitting", ("--weights", "{root}/narrow.pt"), "do not fit"),
    Case("weights-not-a-state-dict", ("--weights", "{root}/tensor.pt"), "state dict"),
    Case(
        "weights-truncated-safetensors",
        ("--weights", "{root}/w-truncated.safetensors"),
        "is truncated: it begins as a safetensors file",
    ),
    Case(
        "weights-mislabelled",
        ("--weights", "{root}/w-safetensors-named.pt"),
        "named .pt but holds a safetensors file",
    ),
    Case("weights-random-bytes", ("--weights", "{root}/random.pt"), "holds none of"),
    Case("weights-empty", ("--weights", "{root}/empty.pt"), "is empty"),
    Case("model-random-bytes", ("--model", "{root}/random.pt"), "holds none of"),
    Case("model-random-onnx", ("--model", "{root}/random.onnx"), "does not parse as an ONNX"),
    Case("model-empty", ("--model", "{root}/empty.pt"), "is empty"),
    Case(
        "model-mislabelled",
        ("--model", "{root}/state-dict.onnx"),
        "named .onnx but holds a torch.save archive",
    ),
    Case(
        "model-truncated-pt2",
        ("--model", "{root}/m-truncated.pt2"),
        "is truncated: it begins as a torch.export archive",
    ),
    Case("model-truncated-safetensors", ("--model", "{root}/w-truncated.safetensors"), "truncated"),
    Case("wrong-class-count", ("--model-option", "num_classes=3"), "10 classes"),
    Case("fixed-two-classes", ("--model", f"{HERE}:two_class_net"), "10 classes"),
    Case("wrong-channels", ("--model-option", "in_channels=3"), "3-channel"),
    Case("output-without-logits", ("--model", f"{HERE}:no_logits_net"), "model.output"),
    yaml_case(
        "output-index-out-of-range",
        "target: {speedup: 2}\nmodel: {source: tests.helpers:tiny_cnn, output: 5}\n",
        "output",
        drop=("--model",),  # the file's model block (with its output) is the case
    ),
    # user code that exits or interrupts: exit 2 with its own message, never 0
    Case("factory-sys-exit-0", ("--model", f"{HERE}:exiting_factory"), "sys.exit(0)"),
    Case(
        "factory-sys-exit-message",
        ("--model", f"{HERE}:exiting_factory_message"),
        "licence server unreachable",
    ),
    Case("factory-os-exit", ("--model", f"{HERE}:hard_exiting_factory"), "os._exit(7)"),
    Case("factory-keyboard-interrupt", ("--model", f"{HERE}:interrupting_factory"), "Keyboard"),
    yaml_case(
        "evaluate-sys-exit",
        f"target: {{speedup: 2}}\nevaluate: {HERE}:exiting_evaluate\n",
        "evaluate tests.test_bad_inputs:exiting_evaluate called sys.exit(0)",
    ),
    yaml_case(
        "loss-keyboard-interrupt",
        f"target: {{speedup: 2}}\nloss: {HERE}:interrupting_loss\n",
        "interrupting_loss raised KeyboardInterrupt",
    ),
    Case("data-sys-exit", ("--data", f"{HERE}:exiting_data"), "sys.exit(3)"),
    Case("data-os-exit", ("--data", f"{HERE}:hard_exiting_data"), "os._exit(0)"),
    # data
    Case("data-dir-missing", ("--data", "cifar10:{root}/nowhere"), "not a directory"),
    Case("data-not-importable", ("--data", "tests.nowhere:loaders"), "cannot be imported"),
    Case("data-raises", ("--data", f"{HERE}:raising_data"), "server is down"),
    Case("data-not-loaders", ("--data", f"{HERE}:not_loaders_data"), "(train, val, test)"),
    Case("empty-split", ("--data", f"{HERE}:empty_val_data"), "val split is empty"),
    Case("negative-labels", ("--data", f"{HERE}:negative_label_data"), "labels include -1"),
    Case("float-labels", ("--data", f"{HERE}:float_label_data"), "integer class"),
    Case("one-class", ("--data", f"{HERE}:one_class_data"), "at least two"),
    Case("val-label-unseen", ("--data", f"{HERE}:val_label_out_of_range_data"), "7"),
    Case("mixed-shapes", ("--data", f"{HERE}:mixed_shape_data"), "1x6x6"),
    Case("nan-inputs", ("--data", f"{HERE}:nan_data"), "val split's sample 10 holds NaN"),
    Case("inf-inputs", ("--data", f"{HERE}:inf_data"), "train split's sample 5 holds NaN or inf"),
    Case("dict-samples", ("--data", f"{HERE}:dict_sample_data"), "a dict with keys"),
    Case("triple-samples", ("--data", f"{HERE}:triple_sample_data"), "tuple of 3 items"),
    Case("empty-train-split", ("--data", f"{HERE}:empty_train_data"), "train split is empty"),
    Case("nan-model-output", ("--model", f"{HERE}:nan_output_net"), "outputs NaN or inf"),
    Case("flat-inputs", ("--data", f"{HERE}:flat_data"), "64"),
    # memory, output, tracking, device, resume
    Case("measure-batch-too-large", ("--measure-batch", "4000000000"), "measure.batch_size"),
    Case("output-is-a-file", ("--output", "{root}/a-file"), "is a file"),
    Case("output-read-only", ("--output", "/sys/compressflow-out"), "cannot be written"),
    Case("output-under-a-file", ("--output", "{root}/a-file/out"), "cannot be written"),
    Case("summary-json-is-a-folder", ("--summary-json", "{root}"), "is a folder"),
    Case("summary-json-read-only", ("--summary-json", "/sys/s.json"), "cannot be written"),
    Case("summary-json-under-a-file", ("--summary-json", "{root}/a-file/s.json"), "is a file"),
    yaml_case(
        "measure-pool-read-only",
        "target: {speedup: 2}\nmeasure: {pool: /sys/compressflow-pool}\n",
        "measure.pool /sys/compressflow-pool cannot be written",
    ),
    yaml_case(
        "measure-pool-is-a-file",
        "target: {speedup: 2}\nmeasure: {pool: '{root}/a-file'}\n",
        "measure.pool",
    ),
    Case(
        "experiment-deleted",
        ("--tracking-uri", "sqlite:///{root}/deleted.db", "--experiment", "gone"),
        "experiment 'gone' was deleted",
    ),
    Case("tracking-unreachable", ("--tracking-uri", "http://127.0.0.1:9"), "does not answer"),
    Case("tracking-store-read-only", ("--tracking-uri", "sqlite:////sys/m.db"), "cannot be"),
    # database stores: probed in preflight, passwords never carried into Prefect
    Case("pg-server-down", ("--tracking-uri", "postgresql://postgres@127.0.0.1:9/x"), "refused"),
    Case(
        "pg-driver-missing",
        ("--tracking-uri", "postgresql+psycopg2://postgres@127.0.0.1:9/x"),
        "driver 'psycopg2'",
    ),
    Case("mysql-password", ("--tracking-uri", "mysql://u:pw@127.0.0.1/x"), "holds a password"),
    Case(
        "pg-password-never-shown",
        ("--tracking-uri", "postgresql://postgres:never-shown@127.0.0.1:9/x"),
        "postgresql://***@127.0.0.1:9/x",
    ),
    Case("cuda-without-gpu", ("--device", "cuda"), "needs a CUDA GPU", gpu_ok=False),
    Case("cuda-runtime-without-gpu", ("--runtime", "cuda"), "needs a CUDA GPU", gpu_ok=False),
    Case("resume-bogus-id", ("--resume", "0123456789abcdef"), "0123456789abcdef"),
    # job names: one path component, safe characters, a length limit
    Case("name-climbs-out", ("--name", "../../escaped"), "one path component"),
    Case("name-absolute", ("--name", "{root}/abs-escaped"), "one path component"),
    Case("name-dot-dot", ("--name", ".."), "one path component"),
    Case("name-dot", ("--name", "."), "one path component"),
    Case("name-backslash", ("--name", "..\\escaped"), "one path component"),
    Case("name-too-long", ("--name", "n" * 300), "at most 100"),
    Case("name-empty", ("--name", ""), "name is empty"),
    Case("name-space", ("--name", "my job"), "only letters, digits"),
    Case("name-hidden", ("--name", ".hidden"), "start with a letter or digit"),
    Case("name-newline", ("--name", "a\nb"), "only letters, digits"),
    # job files: aliases bounded, keys once, a file not a folder
    yaml_case("yaml-billion-laughs", LAUGHS, "billion laughs"),
    yaml_case("yaml-duplicate-key", "target: {speedup: 2}\nseed: 1\nseed: 2\n", "'seed' appears"),
    yaml_case(
        "yaml-duplicate-nested-key", "target: {speedup: 2, runtime: cuda, runtime: x}\n", "runtime"
    ),
    Case("job-is-a-directory", ("--job", "{root}"), "is a directory"),
    # flags complete the job file: its model stays, refined by --weights / --model-option
    yaml_case(
        "flag-weights-keep-file-model",
        "target: {speedup: 2}\nmodel: resnet32\n",
        "on resnet32 /",
        "--weights",
        "{root}/narrow.pt",
        drop=("--model",),
    ),
    yaml_case(
        "flag-option-keep-file-model",
        "target: {speedup: 2}\nmodel: {source: resnet32}\n",
        "on resnet32 /",
        "--model-option",
        "bogus=1",
        drop=("--model",),
    ),
    # a target the calibration proves unreachable: stopped before the search, exit 3
    Case("speedup-unreachable", ("--target-speedup", "1000"), "--force-search", code=3),
]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-inputs")
    for case in CASES:
        for name, text in case.files:
            (root / f"{name}.yaml").write_text(text.replace("{root}", str(root)))
    (root / "a-file").write_text("not a folder")
    good = TinyNet(10, 1, 16).state_dict()
    torch.save(good, root / "good.pt")
    data = (root / "good.pt").read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save(TinyNet(10, 1, 8).state_dict(), root / "narrow.pt")
    torch.save(torch.zeros(3), root / "tensor.pt")
    _model_files(root)
    _deleted_experiment(f"sqlite:///{root}/deleted.db", "gone")
    return root


def _model_files(root: Path) -> None:
    """Truncated, empty, random and mislabelled model and weights files."""
    from safetensors.torch import save_file

    net = TinyNet(10, 1, 16).eval()
    save_file(net.state_dict(), root / "w.safetensors")
    data = (root / "w.safetensors").read_bytes()
    (root / "w-truncated.safetensors").write_bytes(data[: len(data) // 2])
    (root / "w-safetensors-named.pt").write_bytes(data)
    (root / "random.pt").write_bytes(bytes(range(256)) * 16)
    (root / "random.onnx").write_bytes(bytes(range(256)) * 16)
    (root / "empty.pt").write_bytes(b"")
    torch.save(net.state_dict(), root / "state-dict.onnx")
    program = torch.export.export(net, (torch.randn(2, 1, 8, 8),))
    torch.export.save(program, root / "m.pt2")
    data = (root / "m.pt2").read_bytes()
    (root / "m-truncated.pt2").write_bytes(data[: len(data) // 2])


def _deleted_experiment(uri: str, name: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    client.delete_experiment(client.create_experiment(name))


def common_flags(root: Path) -> list[str]:
    return [
        *TINY_JOB,
        "--target-speedup", "1.5", "--rounds", "1",
        "--output", str(root / "out"), "--tracking-uri", f"sqlite:///{root}/mlflow.db",
        "--experiment", "bad-inputs", "--no-register",
    ]  # fmt: skip


def command(case: Case, root: Path) -> list[str]:
    flags = common_flags(root)
    args = list(case.args)
    if None in args or "--job" in args:  # the target comes from the job file, or nowhere
        i = flags.index("--target-speedup")
        del flags[i : i + 2]
        args = [a for a in args if a is not None and a != "--target-speedup"]
    for flag in case.drop:
        i = flags.index(flag)
        del flags[i : i + 2]
    args = [a.replace("{root}", str(root)) for a in args]
    return [sys.executable, "-m", "pipeline", "run", *flags, *args]


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str


def run_cli(argv: list[str]) -> Outcome:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    try:
        done = subprocess.run(
            argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CASE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as err:
        return Outcome(-1, str(err.stdout or ""), f"timed out after {CASE_TIMEOUT_S} s")
    return Outcome(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def outcomes(root: Path) -> dict[str, Outcome]:
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {c.id: pool.submit(run_cli, command(c, root)) for c in CASES}
        return {k: f.result() for k, f in futures.items()}


def test_the_catalogue_is_large_and_distinct():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


def problems(case: Case, got: Outcome) -> list[str]:
    """What is wrong with how the CLI answered ``case`` (empty: it failed cleanly)."""
    both = got.stdout + got.stderr
    tail = "\n".join(both.strip().splitlines()[-6:])
    found = []
    if got.code != case.code:
        found.append(f"exit {got.code}, wanted {case.code}:\n{tail}")
    if case.fragment.lower() not in both.lower():
        found.append(f"{case.fragment!r} not in:\n{tail}")
    if "Traceback" in got.stderr:
        found.append("a traceback on stderr:\n" + got.stderr[-3000:])
    errors = [line for line in got.stderr.splitlines() if "compressflow: error:" in line]
    if case.code == 2 and len(errors) != 1:  # one line, on stderr, names the problem
        found.append(f"{len(errors)} error lines on stderr:\n{got.stderr[-2000:]}")
    return found


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_cleanly(case: Case, outcomes: dict[str, Outcome]):
    assert not problems(case, outcomes[case.id]), "\n".join(problems(case, outcomes[case.id]))


def test_a_password_in_a_tracking_uri_is_never_printed(outcomes):
    got = outcomes["pg-password-never-shown"]
    assert "never-shown" not in got.stdout + got.stderr


def test_no_job_name_writes_outside_the_output(root, outcomes):
    assert outcomes["name-climbs-out"].code == 2
    assert not (root.parent / "escaped").exists()
    assert not (root / "abs-escaped").exists()
    assert sorted(p.name for p in (root / "out").iterdir() if "escaped" in p.name) == []


def test_the_next_job_on_the_same_store_and_output_still_works(root, outcomes):
    """After every bad case: a good tiny job on the same sqlite store and output root."""
    assert outcomes  # the catalogue ran first, on this store and root
    flags = common_flags(root)
    i = flags.index("--target-speedup")
    flags[i : i + 2] = ["--target-compression", "1.2"]  # met by any pruned candidate
    summary = str(root / "summary.json")
    got = run_cli([sys.executable, "-m", "pipeline", "run", *flags, "--summary-json", summary])
    assert got.code == 0, (got.stdout + got.stderr)[-3000:]
    assert "Traceback" not in got.stderr
    assert (root / "summary.json").is_file()


def test_a_negative_control_is_caught():
    """The checks can fail: a traceback with exit 1, or a clean exit 2 about another
    problem, is not what a case asks for."""
    case = next(c for c in CASES if c.id == "factory-raises")
    crash = Outcome(1, "", "Traceback (most recent call last):\nRuntimeError: exploded on purpose")
    assert len(problems(case, crash)) == 3  # exit code, traceback, no error line
    other = Outcome(2, "", "compressflow: error: output x is a file, not a folder\n")
    assert problems(case, other) and not problems(
        case, Outcome(2, "", "compressflow: error: model factory raised: exploded on purpose\n")
    )


# --- the calibration's verdict, in process (the CLI case above runs it end to end) ----


def _calibration(tmp_path, monkeypatch, target: float, reached: float):
    from learners.base import ModelInfo
    from learners.channel import ChannelPruning
    from pipeline.spec import parse
    from tests.helpers import example_inputs, tiny_cnn
    from tests.helpers_aids import calibrate_with

    spec = parse({"target": {"speedup": target}})
    info = ModelInfo(tiny_cnn(width=16), example_inputs())
    return calibrate_with(lambda *a, **k: reached, spec, ChannelPruning(), info, tmp_path)


def test_a_target_beyond_the_largest_ratio_and_the_noise_is_unreachable(tmp_path, monkeypatch):
    found = _calibration(tmp_path, monkeypatch, target=12.0, reached=10.0)  # 10 x 1.1 < 12
    assert found.unreachable and found.start is None
    assert "target unreachable" in found.outcome and "--force-search" in found.outcome


def test_a_target_within_timing_noise_is_still_searched(tmp_path, monkeypatch):
    found = _calibration(tmp_path, monkeypatch, target=10.5, reached=10.0)  # 10 x 1.1 >= 10.5
    assert not found.unreachable
    assert "falls short" in found.outcome


def test_force_search_flag_reaches_the_spec():
    from pipeline.cli.main import build_parser
    from pipeline.cli.run import spec_from_args

    args = build_parser().parse_args(["run", "--target-speedup", "2", "--force-search"])
    assert spec_from_args(args).force_search is True
    args = build_parser().parse_args(["run", "--target-speedup", "2"])
    assert spec_from_args(args).force_search is False
