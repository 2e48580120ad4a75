"""No measurement, export or learner moves or changes the caller's model: its device, every
module's train/eval flag and its state dict (hashed) are the same before and after.

The model comes in *training* mode, so a stray ``model.eval()`` shows (the baseline is in
eval mode in the flow, but a caller's model may be in either). On a GPU, the torch runner
once moved the caller's baseline to ``cuda`` and broke the next CPU step; the CUDA
runtimes' version of this test is in ``tests/test_gpu_runtimes.py``.
"""

import pytest
import torch

from learners import registry
from learners.base import ModelInfo
from learners.formats import export
from pipeline import measure
from tests.helpers_learners import example_inputs, make_context, trained_tiny

CPU_RUNTIMES = [r for r in measure.RUNTIMES if r not in measure.GPU_RUNTIMES]


def _training_model() -> torch.nn.Module:
    return trained_tiny().train()


def _settings(runtime: str) -> measure.LatencySettings:
    return measure.LatencySettings(runtime=runtime, batch_size=4, warmup=1, repeats=3)


def test_the_fingerprint_sees_a_mode_change_a_weight_change_and_a_dtype_change():
    """Negative control: the check below can fail."""
    model = _training_model()
    before = measure.fingerprint(model)
    assert measure.fingerprint(model) == before
    model.eval()
    assert measure.fingerprint(model) != before
    model.train()
    with torch.no_grad():
        model.fc.bias[0] += 1e-6
    assert measure.fingerprint(model)[2] != before[2]
    assert measure.fingerprint(_training_model().half())[2] != before[2]


def test_the_old_runner_would_have_failed_this_test():
    """What ``_torch_runner`` did before (``model.eval().to(device)``) changes the flags."""
    model = _training_model()
    before = measure.fingerprint(model)
    model.eval().to("cpu")
    assert measure.fingerprint(model) != before


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
def test_timing_leaves_the_model_alone(runtime, tmp_path):
    baseline, candidate = _training_model(), _training_model()
    before = measure.fingerprint(baseline), measure.fingerprint(candidate)
    settings = _settings(runtime)
    measure.compare_latency(baseline, candidate, example_inputs(), settings, tmp_path)
    measure.latency_ms(baseline, example_inputs(), settings, tmp_path)
    assert (measure.fingerprint(baseline), measure.fingerprint(candidate)) == before


def test_counting_flops_and_parameters_leaves_the_model_alone():
    model = _training_model()
    before = measure.fingerprint(model)
    assert measure.count_flops(model, example_inputs()) > 0
    assert measure.count_params(model) > 0
    assert measure.fingerprint(model) == before


def test_exporting_leaves_the_model_alone(tmp_path):
    model = _training_model()
    before = measure.fingerprint(model)
    export.export_onnx(model, example_inputs(), tmp_path / "m.onnx")
    export.save_deployable(model, example_inputs(), tmp_path / "d")
    assert measure.fingerprint(model) == before


@pytest.mark.parametrize("name", registry.known())
def test_a_learner_leaves_its_input_alone_and_save_leaves_its_output_alone(name, tmp_path):
    model = _training_model()
    before = measure.fingerprint(model)
    learner = registry.get(name)
    dims = learner.space(ModelInfo(model, example_inputs()))
    assert measure.fingerprint(model) == before, "space() changed the model"
    params = {d.name: _first(d) for d in dims}
    out = learner.compress(model, params, make_context(epochs=1, n_train=128))
    assert measure.fingerprint(model) == before, "compress() changed its input"
    after = measure.fingerprint(out)
    learner.save(out, example_inputs(), tmp_path / name)
    assert measure.fingerprint(out) == after, "save() changed the model it saved"


def _first(dim):
    """A valid proposal: the middle of a range, the first of a list of choices."""
    if hasattr(dim, "choices"):
        return dim.choices[0]
    middle = (dim.low + dim.high) / 2
    return middle if isinstance(dim.low, float) else int(middle)
