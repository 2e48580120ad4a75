import copy

import pytest
import torch

from hpo.space import Real
from learners import distill
from learners.finetune import (
    DistillSettings,
    FeatureTap,
    TrainSettings,
    attention_loss,
    attention_map,
    distillation_loss,
    make_finetune,
    train_,
)
from tests.helpers_learners import TinyNet, digits_loaders, trained_tiny


def test_space_has_temperature_and_alpha_and_optionally_the_feature_weight():
    assert distill.space() == [Real("temperature", 1.0, 8.0), Real("alpha", 0.0, 1.0)]
    dims = distill.space(distill.DistillConfig(feature_weight=(0.1, 100.0)))
    assert dims[-1] == Real("feature_weight", 0.1, 100.0, "log-uniform")


def test_settings_from_params_uses_the_proposal_and_defaults():
    s = distill.settings_from_params({"temperature": 2.5, "alpha": 0.3})
    assert (s.temperature, s.alpha, s.feature_weight) == (2.5, 0.3, 0.0)
    assert distill.settings_from_params({}) == DistillSettings()
    job = DistillSettings(temperature=6.0, alpha=0.2, feature_weight=5.0)
    assert distill.settings_from_params({"alpha": 0.9}, default=job).temperature == 6.0
    assert distill.settings_from_params({"alpha": 0.9}, default=job).feature_weight == 5.0


def test_distillation_loss_is_cross_entropy_at_alpha_zero_and_zero_for_a_perfect_copy():
    logits, targets = torch.randn(16, 10), torch.randint(0, 10, (16,))
    ce = torch.nn.functional.cross_entropy(logits, targets)
    torch.testing.assert_close(
        distillation_loss(logits, torch.randn(16, 10), targets, DistillSettings(alpha=0.0)), ce
    )
    pure_kd = distillation_loss(logits, logits, targets, DistillSettings(alpha=1.0))
    assert abs(float(pure_kd)) < 1e-6


def test_attention_maps_ignore_the_channel_count():
    features = torch.randn(4, 16, 6, 6)
    shuffled = features[:, torch.randperm(16)]  # channel order does not matter
    torch.testing.assert_close(attention_map(features), attention_map(shuffled))
    wide = torch.cat([features, features], dim=1)  # twice the channels, same attention
    torch.testing.assert_close(attention_map(features), attention_map(wide))
    assert float(attention_loss({"a": features}, {"a": wide})) < 1e-10
    assert float(attention_loss({"a": features}, {"a": torch.randn(4, 3, 6, 6)})) > 0
    with pytest.raises(ValueError, match="no feature maps"):
        attention_loss({"a": torch.randn(2, 4)}, {"a": torch.randn(2, 4)})


def test_feature_distillation_pulls_the_student_towards_the_teacher_and_cleans_up():
    teacher = trained_tiny()
    torch.manual_seed(1)
    student = TinyNet(width=4)  # narrower: attention transfer still applies
    train_loader, _ = digits_loaders(n_train=256)
    x = next(iter(train_loader))[0]

    def gap(model):
        s_tap, t_tap = (
            FeatureTap(model, ("conv2", "conv3")),
            FeatureTap(teacher, ("conv2", "conv3")),
        )
        with torch.no_grad():
            model.eval()(x), teacher(x)
        out = float(attention_loss(s_tap.outputs, t_tap.outputs))
        s_tap.close(), t_tap.close()
        return out

    before = gap(student)
    settings = DistillSettings(alpha=0.5, feature_weight=50.0, feature_layers=("conv2", "conv3"))
    plain = copy.deepcopy(student)
    train_(student, train_loader, None, TrainSettings(epochs=2, lr=0.05), teacher, settings)
    train_(plain, train_loader, None, TrainSettings(epochs=2, lr=0.05), teacher, DistillSettings())
    assert gap(student) < before and gap(student) < gap(plain)
    assert all(not m._forward_hooks for m in (*student.modules(), *teacher.modules()))


def test_unknown_feature_layers_are_named_in_the_error():
    train_loader, _ = digits_loaders(n_train=64)
    settings = DistillSettings(feature_weight=1.0, feature_layers=("layer9",))
    with pytest.raises(ValueError, match="layer9"):
        train_(TinyNet(), train_loader, None, TrainSettings(epochs=1), TinyNet(), settings)


def test_make_finetune_applies_overrides_and_rejects_unknown_ones():
    train_loader, val_loader = digits_loaders(n_train=64)
    finetune = make_finetune(train_loader, val_loader, TrainSettings(epochs=2))
    assert len(finetune(TinyNet())["train_loss"]) == 2
    assert finetune(TinyNet(), epochs=1)["train_loss"].__len__() == 1
    with pytest.raises(TypeError, match="overrides"):
        finetune(TinyNet(), epoch=1)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"alpha": 1.5}, "alpha"),
        ({"feature_weight": -1.0}, "feature_weight"),
    ],
)
def test_settings_errors_say_what_is_allowed(options, message):
    with pytest.raises(ValueError, match=message):
        DistillSettings(**options)


def test_config_errors_say_what_is_allowed():
    with pytest.raises(ValueError, match="temperature"):
        distill.DistillConfig(min_temperature=5.0, max_temperature=2.0)
    with pytest.raises(ValueError, match="alpha"):
        distill.DistillConfig(max_alpha=1.5)
    with pytest.raises(ValueError, match="feature_weight"):
        distill.DistillConfig(feature_weight=(1.0, 0.5))


def test_batchnorm_recalibration_gives_population_statistics_and_keeps_weights():
    from learners.finetune import recalibrate_batchnorm_

    model = trained_tiny()
    weights = copy.deepcopy(model.conv1.weight)
    train_loader, _ = digits_loaders(batch_size=64, n_train=1152)  # 18 equal batches
    with torch.no_grad():
        model.bn1.running_mean.fill_(5.0)
        outputs = torch.cat([model.conv1(x) for x, _ in train_loader])
    assert recalibrate_batchnorm_(model, train_loader) == 18
    torch.testing.assert_close(model.bn1.running_mean, outputs.mean(dim=(0, 2, 3)))
    assert torch.equal(model.conv1.weight, weights) and not model.training
    assert model.bn1.momentum == 0.1
