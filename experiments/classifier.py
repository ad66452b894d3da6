"""The measuring classifier: how data/mnist_classifier.pt was trained, and the maintainer's step that rewrites it.

    python experiments/classifier.py            # retrains on the shipped digits (about a minute on 2 cores) and
                                                # replaces data/mnist_classifier.pt

The notebooks only load it (helper_functions.load_classifier); nothing a reader runs by default writes it.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helper_functions import CLASSIFIER_PATH, MnistClassifier, load_mnist_subset, split_held_out  # noqa: E402


def train_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 12, batch_size: int = 64,
                     lr: float = 2e-3, seed: int = 0, progress: bool = False) -> MnistClassifier:
    """Train MnistClassifier on images in [0, 1] with random 2-pixel shifts (Adam, cosine-decayed lr), seeded."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = MnistClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    total = epochs * math.ceil(len(images) / batch_size)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    padded = F.pad(images, (2, 2, 2, 2))
    model.train()
    for _ in tqdm(range(epochs), desc="classifier", disable=not progress):
        order = torch.randperm(len(images), generator=generator)
        for first in range(0, len(order), batch_size):
            batch = order[first:first + batch_size]
            dy, dx = torch.randint(0, 5, (2,), generator=generator).tolist()  # shift by -2 ... 2 pixels
            x = padded[batch, :, dy:dy + 28, dx:dx + 28]
            loss = F.cross_entropy(model(x), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            decay.step()
    return model.eval()

@torch.inference_mode()
def classifier_accuracy(model: MnistClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images (in [0, 1]) whose predicted class is the label."""
    model.eval()
    predictions = torch.cat([model(chunk).argmax(1) for chunk in images.split(1000)])
    return (predictions == labels).float().mean().item()

def write_classifier(path: Path | str = CLASSIFIER_PATH, seed: int = 0) -> float:
    """Train the measuring classifier on the shipped digits minus a held-out split, save it with its accuracy."""
    images, labels = load_mnist_subset()
    train, held_out = split_held_out(labels, seed=seed)
    training = {"epochs": 12, "batch_size": 64, "lr": 2e-3, "seed": seed}
    model = train_classifier(images[train], labels[train], **training)
    accuracy = classifier_accuracy(model, images[held_out], labels[held_out])
    torch.save({"state_dict": model.state_dict(), "held_out_accuracy": accuracy, "training": training}, path)
    print(f"classifier: held-out accuracy {accuracy:.4f} on {len(held_out)} digits; written to {Path(path).name}")
    return accuracy


if __name__ == "__main__":
    write_classifier()
