import pytest
import torch
from safetensors.torch import save_file

from pipeline.sources.models import ModelSourceError, build_model
from tests.helpers import TinyNet, example_inputs


def test_zoo_name_builds_untrained_model_with_data_shapes():
    model, trained = build_model("resnet20", num_classes=7, in_channels=1)
    assert not trained
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


def test_factory_gets_num_classes_and_options():
    model, trained = build_model("tests.helpers:tiny_cnn", 3, 1, {"width": 4})
    assert not trained and model.fc.out_features == 3 and model.conv1.out_channels == 4


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_weights_load_strictly_and_safely(tmp_path, fmt):
    source, _ = build_model("tests.helpers:tiny_cnn", 10, 1)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        save_file(source.state_dict(), str(path))
    else:
        torch.save(source.state_dict(), path)
    model, trained = build_model("tests.helpers:tiny_cnn", 10, 1, weights=str(path))
    assert trained
    x = example_inputs()
    assert torch.equal(model.eval()(x), source.eval()(x))


def test_weights_that_do_not_fit_are_reported(tmp_path):
    small, _ = build_model("tests.helpers:tiny_cnn", 10, 1, {"width": 4})
    torch.save(small.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ModelSourceError, match="do not fit"):
        build_model("tests.helpers:tiny_cnn", 10, 1, weights=str(tmp_path / "w.pt"))


def test_pickled_weights_file_is_refused(tmp_path):
    torch.save(TinyNet(), tmp_path / "whole.pt")  # a full module is not a weights file
    with pytest.raises(ModelSourceError, match="weights_only"):
        build_model("tests.helpers:tiny_cnn", 10, 1, weights=str(tmp_path / "whole.pt"))


def test_saved_full_model_file_loads(tmp_path):
    model = TinyNet(width=5)
    torch.save(model, tmp_path / "m.pt")  # a pickled module: only with the flag
    loaded, trained = build_model(str(tmp_path / "m.pt"), 10, 1, trust_pickled=True)
    assert trained and loaded.conv1.out_channels == 5


def test_bad_factories_are_reported():
    with pytest.raises(ModelSourceError, match="cannot be imported"):
        build_model("tests.helpers:nope", 10, 1)
    with pytest.raises(ModelSourceError, match="not an nn.Module"):
        build_model("tests.helpers:not_a_module", 10, 1)
