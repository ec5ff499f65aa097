"""Serve a run in memory: images in, ``cnncodes predict``'s columns out, no files written.

:func:`load_predictor` builds the run's torch module once (:mod:`cnncodes.probe.torch_probe`);
:meth:`Predictor.predict` then scores PIL images, ``H x W x C`` (or ``H x W``) uint8
arrays or image paths in batches. Paths are decoded as every cnncodes command decodes
files (EXIF rotation, reduced-scale decoding of very large JPEGs, see
:mod:`cnncodes.data.decode`), so their rows equal ``cnncodes predict RUN`` on the same
files; images given in memory are taken as they are (converted to 8-bit RGB the same way,
transparent pixels on white).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..data.decode import as_decoded, decode_image, first_line
from ..errors import CnnCodesError
from ..runtime import resolve_device
from .torch_probe import RunNet, load_run_net

__all__ = ["Predictor", "load_predictor"]

ImageLike = Image.Image | np.ndarray | str | os.PathLike[str]


class Predictor:
    """A run loaded for prediction in memory (make one with :func:`load_predictor`).

    Attributes:
        classes: the run's classes, in output order.
        columns: the score columns, as in ``cnncodes predict``'s CSV (``proba_<class>``,
            or ``score_<class>`` for pipelines without probabilities).
        net: the run as a torch module (:class:`~cnncodes.probe.torch_probe.RunNet`).
    """

    def __init__(self, net: RunNet, *, device: str = "cpu", batch_size: int = 32) -> None:
        if batch_size < 1:
            raise CnnCodesError(f"batch_size must be at least 1; got {batch_size!r}.")
        self.net = net
        self.classes = list(net.classes)
        self.columns = list(net.columns)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self._module = net.scored().to(self.device)

    def scores(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        """The :attr:`columns` for each image, ``[N, len(columns)]`` float64."""
        batches = [self._forward(chunk) for chunk in _chunks(_as_list(images), self.batch_size)]
        if not batches:
            return np.zeros((0, len(self.columns)))
        return np.concatenate(batches)

    def predict_proba(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        """Class probabilities ``[N, n_classes]``, in :attr:`classes` order.

        Raises:
            CnnCodesError: the run's pipeline has no probabilities (use :meth:`scores`).
        """
        if not self.net.probabilities:
            raise CnnCodesError(
                "This run's pipeline gives decision scores, not probabilities; call "
                "Predictor.scores() or predict(), or fit --clf logreg/torch_logreg/mlp."
            )
        return self.scores(images)

    def predict(self, images: ImageLike | Sequence[ImageLike]) -> pd.DataFrame:
        """One row per image: ``predicted``, then the :attr:`columns`, as ``cnncodes predict``."""
        values = self.scores(images)
        # Two classes with one decision score: a positive score is the second class.
        chosen = (values[:, 0] > 0).astype(int) if values.shape[1] == 1 else values.argmax(axis=1)
        frame = pd.DataFrame({"predicted": [self.classes[i] for i in chosen]})
        for index, column in enumerate(self.columns):
            frame[column] = values[:, index]
        return frame

    @torch.inference_mode()
    def _forward(self, images: list[ImageLike]) -> np.ndarray:
        transform = self.net.backbone.transform
        batch = torch.stack([transform(_rgb(image)) for image in images]).to(self.device)
        return self._module(batch).double().cpu().numpy()


def load_predictor(run: str | os.PathLike[str], *, device: str = "cpu", batch_size: int = 32,
                   trusted: Sequence[str] = ()) -> Predictor:
    """Load a ``cnncodes fit`` or ``cnncodes finetune`` run to predict images in memory.

    Example::

        predictor = cnncodes.load_predictor("cache/runs/hymenoptera-logreg-global_pool")
        frame = predictor.predict([Image.open("bee.jpg"), array_hwc_uint8])

    Args:
        run: the run folder.
        device: ``cpu`` (default), ``cuda``, ``auto``, ...
        batch_size: images per forward pass.
        trusted: further type names the run's ``model.skops`` may hold (see
            :func:`cnncodes.load_model`).

    Raises:
        CnnCodesError: not a run, or a fit run whose pipeline is not linear or MLP
            (``rbf_svm``, ``knn``: use :func:`cnncodes.predict`).
    """
    return Predictor(load_run_net(run, trusted=tuple(trusted)), device=device,
                     batch_size=batch_size)


def _as_list(images: ImageLike | Iterable[ImageLike]) -> list[ImageLike]:
    if isinstance(images, (Image.Image, str, os.PathLike)):
        return [images]
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim in (2, 3) \
            and (images.ndim == 2 or images.shape[-1] in (1, 3, 4)):
        return [images]  # one image; a 4-d array is a batch of them
    return list(images)


def _chunks(items: list[ImageLike], size: int) -> Iterator[list[ImageLike]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _rgb(image: ImageLike) -> Image.Image:
    """8-bit RGB, as cnncodes decodes files (see :mod:`cnncodes.data.decode`)."""
    if isinstance(image, (str, os.PathLike)):
        try:
            return decode_image(image)
        except Exception as error:  # noqa: BLE001 - PIL raises many kinds on bad files
            raise CnnCodesError(
                f"Image {str(Path(image))!r} cannot be read ({first_line(error)}); give a "
                "JPEG, PNG or other file that PIL can decode."
            ) from None
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
                image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise CnnCodesError(
                f"An image array must be uint8 H x W x C with C 1, 3 or 4 (or H x W); got "
                f"{image.dtype} {tuple(image.shape)}."
            )
        image = Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    if not isinstance(image, Image.Image):
        raise CnnCodesError(
            f"Cannot predict a {type(image).__name__}; give PIL images, uint8 arrays or paths."
        )
    return as_decoded(image)
