"""Writes reference modules in the on-disk formats of the official releases.

* IR-50 `ir50.pth`: a plain state_dict (face.evoLVe `body.N` or POSTER++ `body1/2/3` names).
* `mobilefacenet_model_best.pth.tar`: `{'epoch', 'state_dict', 'optimizer'}`.
* POSTER++ fine-tuned checkpoints: `{'epoch', 'state_dict' ('module.' keys), 'best_acc',
  'recorder1', 'recorder'}` where the recorders are pickled `__main__.RecorderMeter(1)`
  objects, as POSTER++'s main.py writes them.
* ARBEx: `vit.best.N.pth`, `classifier.best.N.pth`, `anchors.best.N.pth` plain state_dicts.
"""

from __future__ import annotations

import collections
import contextlib
import sys
from pathlib import Path

import numpy as np
import torch


class RecorderMeter:
    """Mimics POSTER++ main.py's recorder: numpy arrays of losses and accuracies."""

    def __init__(self, total_epoch: int):
        self.total_epoch = total_epoch
        self.current_epoch = 0
        self.epoch_losses = np.zeros((total_epoch, 2), dtype=np.float32)
        self.epoch_accuracy = np.zeros((total_epoch, 2), dtype=np.float32)


class RecorderMeter1(RecorderMeter):
    pass


@contextlib.contextmanager
def _as_main_module(*classes):
    """Makes pickle record `classes` as `__main__.<name>` (like a class of a run script)."""
    main = sys.modules["__main__"]
    saved = [(c, c.__module__, getattr(main, c.__name__, None)) for c in classes]
    try:
        for c in classes:
            c.__module__ = "__main__"
            setattr(main, c.__name__, c)
        yield
    finally:
        for c, module, old in saved:
            c.__module__ = module
            if old is None:
                delattr(main, c.__name__)
            else:
                setattr(main, c.__name__, old)


def save_poster_checkpoint(model: torch.nn.Module, path: Path, *, legacy: bool = False) -> Path:
    """A POSTER++ `model_best.pth`: DataParallel keys, recorder objects, best_acc tensor."""
    state = collections.OrderedDict(("module." + k, v) for k, v in model.state_dict().items())
    checkpoint = {
        "epoch": 17,
        "state_dict": state,
        "best_acc": torch.tensor(92.21),
        "recorder1": RecorderMeter1(200),
        "recorder": RecorderMeter(200),
    }
    with _as_main_module(RecorderMeter, RecorderMeter1):
        torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    return path


def save_mobilefacenet_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """`mobilefacenet_model_best.pth.tar`-style dict with the weights under 'state_dict'."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.save(
        {"epoch": 51, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict()}, path
    )
    return path


def save_state_dict(model: torch.nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def save_arbex(model: torch.nn.Module, directory: Path, iteration: int = 1000) -> list[Path]:
    """The three files ARBEx writes for its best iteration (SelfAttn is not saved)."""
    paths = []
    for part in ("vit", "classifier", "anchors"):
        path = directory / f"{part}.best.{iteration}.pth"
        torch.save(getattr(model, part).state_dict(), path)
        paths.append(path)
    return paths
