"""The statistics over draws, and the classifier's recorded training, checked against their definitions."""

import math

import pytest
import torch

import helper_functions as hf
from classifier import classifier_accuracy, train_classifier
from draws import ratio_of_means, summarise_draws


def test_summarise_draws_gives_mean_spread_and_standard_error():
    summary = summarise_draws([4.0, 6.0, 8.0, 10.0])
    assert summary["mean"] == 7.0 and summary["draws"] == 4
    assert summary["sd"] == pytest.approx(math.sqrt(20 / 3)) and summary["sem"] == pytest.approx(summary["sd"] / 2)
    one = summarise_draws([5.4])
    assert one["mean"] == 5.4 and math.isnan(one["sd"]) and math.isnan(one["sem"])
    with pytest.raises(ValueError, match="at least one"):
        summarise_draws([])
    with pytest.raises(ValueError, match="finite"):
        summarise_draws([1.0, float("nan")])


def test_ratio_of_means_propagates_both_standard_errors():
    a, b = {"mean": 6.0, "sem": 0.3}, {"mean": 5.0, "sem": 0.2}
    ratio, error = ratio_of_means(a, b)
    assert ratio == pytest.approx(1.2) and error == pytest.approx(math.sqrt((0.3 / 5) ** 2 + (6 * 0.2 / 25) ** 2))
    assert ratio_of_means({"mean": 6.0, "sem": 0.0}, {"mean": 5.0, "sem": 0.0})[1] == 0.0
    generator = torch.Generator().manual_seed(0)  # the delta method against a simulation, for small errors
    simulated = (6.0 + 0.06 * torch.randn(200_000, generator=generator, dtype=torch.float64)) / (5.0 + 0.05 * torch.randn(200_000, generator=generator, dtype=torch.float64))
    assert ratio_of_means({"mean": 6.0, "sem": 0.06}, {"mean": 5.0, "sem": 0.05})[1] == pytest.approx(simulated.std().item(), rel=0.02)
    with pytest.raises(ValueError, match="positive"):
        ratio_of_means(a, {"mean": 0.0, "sem": 0.1})


def test_shipped_classifier_reaches_its_recorded_held_out_accuracy():
    images, labels = hf.load_mnist_subset()
    _, held_out = hf.split_held_out(labels)
    checkpoint = torch.load(hf.CLASSIFIER_PATH, weights_only=True)
    accuracy = classifier_accuracy(hf.load_classifier(), images[held_out], labels[held_out])
    assert accuracy == pytest.approx(checkpoint["held_out_accuracy"], abs=1e-6) and accuracy >= 0.97


def test_retraining_the_classifier_reproduces_its_accuracy():
    """Retrain from the shipped recipe (about 30 s on 2 CPU cores) and land within a point of the shipped accuracy."""
    images, labels = hf.load_mnist_subset()
    train, held_out = hf.split_held_out(labels)
    checkpoint = torch.load(hf.CLASSIFIER_PATH, weights_only=True)
    model = train_classifier(images[train], labels[train], **checkpoint["training"])
    accuracy = classifier_accuracy(model, images[held_out], labels[held_out])
    assert accuracy >= 0.97
    assert accuracy == pytest.approx(checkpoint["held_out_accuracy"], abs=0.01)
