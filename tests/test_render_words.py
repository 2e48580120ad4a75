"""Output says what its figures are: a custom metric by its name, no ``0`` for a count
that was not made, which measurement each speedup comes from, and a threshold with the
digits that decide it."""

from pipeline.job.preflight import deciding
from pipeline.job.render import description, table


def summary(**changes):
    base = {
        "job": "j",
        "target": {"kind": "speedup", "value": 2.0, "runtime": "onnxruntime-cpu", "also_on": []},
        "target_met": True,
        "stop_reason": "round budget spent",
        "baseline": {
            "accuracy": -0.5, "test_accuracy": -0.6, "latency_ms": 2.0, "flops": 1000,
            "param_count": 5000, "bytes": 20000,
        },
        "best": {
            "round": 1, "accuracy": -0.55, "test_accuracy": -0.65, "latency_ms": 1.0,
            "speedup": 2.1, "onnx_speedup": 2.0, "compression": 3.9, "achieved_speedup": 2.1,
            "flops": 500, "param_count": None, "bytes": 5000, "learners": ["int8"],
        },
        "rounds": {"total": 1, "feasible": 1, "failed": 0},
    }  # fmt: skip
    base.update(changes)
    return base


def test_a_custom_metric_is_named_and_an_uncounted_count_is_a_dash():
    text = table(summary(metric="neg_mse"))
    assert "val metric (neg_mse)" in text and "test metric (neg_mse)" in text
    assert "accuracy" not in text.split("\n", 1)[1]
    params = next(line for line in text.splitlines() if line.startswith("parameters"))
    assert params.split() == ["parameters", "5,000", "-"]


def test_the_mlflow_description_names_a_custom_metric_too():
    text = description(summary(metric="neg_mse"))
    assert "validation metric (neg_mse) -0.5500 (baseline -0.5000)" in text
    assert "accuracy" not in text
    assert "validation accuracy -0.5500" in description(summary())  # classification


def test_each_speedup_says_which_measurement_it_is():
    text = table(summary())
    assert "val accuracy" in text  # a summary without a metric name: classification
    assert "speedup (search's timing)" in text
    assert "speedup onnxruntime (exported files)" in text


def test_a_missing_factor_is_a_dash_never_zero():
    s = summary()
    s["best"]["compression"] = None
    text = description(s)
    assert "compression -." in text and "0.00x" not in text


def test_a_threshold_prints_with_the_digits_that_decide_it():
    assert deciding(0.1498, 0.15) == ("0.1498", "0.1500")
    assert deciding(0.42, 0.15) == ("0.420", "0.150")
