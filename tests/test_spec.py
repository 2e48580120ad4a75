import pytest

from pipeline import spec
from pipeline.cli.main import build_parser
from pipeline.cli.run import spec_from_args


def parse(**kw):
    return spec.parse({"target": {"speedup": 2.0}, **kw})


def error_of(data) -> str:
    with pytest.raises(spec.SpecError) as info:
        spec.parse(data)
    return str(info.value)


def test_defaults_round_trip_through_dict():
    s = parse()
    assert spec.parse(s.to_dict()) == s
    assert s.learners == ["channel"] and s.target.kind == "speedup"


@pytest.mark.parametrize(
    ("data", "field", "hint"),
    [
        ({"target": {"speedup": 1.0}}, "target", "must be > 1"),
        ({"target": {"compression": 0.5}}, "target", "must be > 1"),
        ({"target": {"speedup": 2, "compression": 4}}, "target", "exactly one"),
        ({"target": {}}, "target", "exactly one"),
        ({"target": {"speedup": 2, "runtime": "tpu"}}, "target", "onnxruntime-cpu"),
        (
            {"target": {"speedup": 2}, "budget": {"rounds": -1}},
            "budget.rounds",
            "greater than or equal to 1 (got -1)",
        ),
        ({"target": {"speedup": 2}, "budget": {"minutes": -5}}, "budget.minutes", "greater than 0"),
        ({"target": {"speedup": 2}, "learners": "channel,nope"}, "learners", "known learners"),
        ({"target": {"speedup": 2}, "model": "resnet999"}, "model.source", "resnet20"),
        ({"target": {"speedup": 2}, "data": "mnist"}, "data.source", "cifar10:<dir>"),
        ({"target": {"speedup": 2}, "device": "tpu"}, "device", "auto"),
        ({"target": {"speedup": 2, "also_on": ["tflite"]}}, "target", "'tflite' is unknown"),
        ({"target": {"compression": 4, "also_on": ["cuda"]}}, "target", "speedup targets only"),
        ({"target": {"speedup": 2}, "tragets": 1}, "tragets", "unknown key"),
        ({"target": {"speedup": 2}, "finetune": {"epoch": 3}}, "finetune.epoch", "unknown key"),
    ],
)
def test_bad_specs_name_the_field_and_what_is_allowed(data, field, hint):
    message = error_of(data)
    assert f"{field}:" in message
    assert hint in message


def test_learner_options_must_name_a_chosen_learner():
    message = error_of({"target": {"speedup": 2}, "learner_options": {"sparsity": {}}})
    assert "not in learners" in message


def test_yaml_file_loads_and_reports_bad_yaml(tmp_path):
    good = tmp_path / "job.yaml"
    good.write_text("target: {compression: 4}\nmodel: resnet20\nlearners: channel\n")
    assert spec.load(good).target.compression == 4.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("target: [unclosed\n")
    with pytest.raises(spec.SpecError, match="not valid YAML"):
        spec.load(bad)
    with pytest.raises(spec.SpecError, match="does not exist"):
        spec.load(tmp_path / "missing.yaml")


def test_flags_override_the_job_file(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("target: {speedup: 3}\nbudget: {rounds: 5, minutes: 2}\n")
    args = build_parser().parse_args(
        [
            "run",
            "--job",
            str(job),
            "--target-compression",
            "4",
            "--rounds",
            "9",
            "--model-option",
            "width=8",
            "--learners",
            "channel",
        ]
    )
    s = spec_from_args(args)
    assert s.target.kind == "compression" and s.target.value == 4.0
    assert s.budget.rounds == 9 and s.budget.minutes == 2
    assert s.model.options == {"width": 8}


def test_the_demo_job_file_is_valid():
    s = spec.load("jobs/demo.yaml")
    assert s.target.speedup == 2.0 and s.budget.rounds >= 5 and s.budget.screen >= 100


def _from_file(tmp_path, text: str, *flags: str) -> spec.JobSpec:
    job = tmp_path / "job.yaml"
    job.write_text(text)
    return spec_from_args(build_parser().parse_args(["run", "--job", str(job), *flags]))


@pytest.mark.parametrize("model", ["resnet32", "{source: resnet32}"])
def test_flags_refine_the_file_model_and_never_bring_back_the_default(tmp_path, model):
    text = f"target: {{speedup: 2, runtime: onnxruntime-cpu}}\nmodel: {model}\ndata: digits\n"
    s = _from_file(tmp_path, text, "--weights", "w.safetensors", "--model-option", "width=2")
    assert s.model.source == "resnet32"
    assert s.model.weights == "w.safetensors" and s.model.options == {"width": 2}
    s = _from_file(tmp_path, text, "--image-size", "16", "--target-speedup", "3")
    assert s.data.source == "digits" and s.data.image_size == 16
    assert s.target.speedup == 3 and s.target.runtime == "onnxruntime-cpu"


def test_model_flag_replaces_the_file_model_with_its_weights(tmp_path):
    text = "target: {speedup: 2}\nmodel: {source: resnet32, weights: w32.pt, options: {a: 1}}\n"
    s = _from_file(tmp_path, text, "--model", "resnet20")
    assert (s.model.source, s.model.weights, s.model.options) == ("resnet20", None, {})


def test_default_job_names_tell_learners_apart_and_stay_one_safe_component():
    a = parse(model="resnet20", learners="channel")
    onnx = {"speedup": 2, "runtime": "onnxruntime-cpu"}
    b = parse(model="resnet20", learners="int8", target=onnx)
    assert a.job_name != b.job_name
    for source in ("tests.helpers:tiny_cnn", "models:/my model/3", "s3://b/some dir/m.pt2"):
        name = parse(model=source).job_name
        spec.check_name(name)  # raises if it is not one safe path component
