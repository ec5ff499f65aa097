"""Export a run's torch module (:mod:`cnncodes.probe.torch_probe`) as TorchScript or ONNX.

The exported module takes the preprocessed image batch, float32 ``[N, 3, H, W]`` (the
backbone's own eval transform: RGB, resize, centre crop, divide by 255, normalise; the
numbers are written beside it) and returns ``cnncodes predict``'s score columns for each
image: the class probabilities, or the decision scores of pipelines without them. A JSON
file next to it (``FILE.json``) names the classes, the output columns and the
preprocessing. TorchScript is traced (``torch.jit.trace``); ONNX uses torch's TorchScript-based
exporter (``dynamo=False``, opset 17) with a dynamic batch axis and needs the ``export``
extra (``onnx``; ``onnxruntime`` to run it).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import torch

from ..errors import CnnCodesError
from .torch_probe import RunNet, describe, dumps, load_run_net

__all__ = ["EXPORT_FORMATS", "export_run"]

EXPORT_FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 17


def export_run(run: str | os.PathLike[str], out: str | os.PathLike[str], *,
               format: str = "torchscript", trusted: tuple[str, ...] = ()) -> Path:
    """Write the run (``cnncodes fit`` or ``cnncodes finetune``) as one module file.

    Args:
        run: the run folder.
        out: the file to write; ``out`` + ``.json`` describes it.
        format: ``torchscript`` or ``onnx``.
        trusted: further type names the run's ``model.skops`` may hold.

    Returns:
        The written file.

    Raises:
        CnnCodesError: unknown format, ONNX without the ``export`` extra, not a run, or a
            pipeline with a non-linear step.
    """
    if format not in EXPORT_FORMATS:
        raise CnnCodesError(f"Export format {format!r} is not one of {', '.join(EXPORT_FORMATS)}.")
    if format == "onnx" and importlib.util.find_spec("onnx") is None:
        raise CnnCodesError(
            "ONNX export needs the onnx package; pip install 'cnncodes[export]' (or use "
            "--format torchscript)."
        )
    net = load_run_net(run, trusted=trusted)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    size = net.backbone.input_size
    example = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings():  # tracer notes about constants are not the user's concern
        warnings.simplefilter("ignore")
        if format == "torchscript":
            _torchscript(net, example, temporary)
        else:
            _onnx(net, example, temporary)
    os.replace(temporary, path)
    path.with_name(path.name + ".json").write_text(dumps(describe(net)) + "\n", encoding="utf-8")
    return path


def _torchscript(net: RunNet, example: torch.Tensor, path: Path) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(net.scored(), example, check_trace=False)
    traced.save(str(path))


def _onnx(net: RunNet, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        net.scored(), (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
        input_names=["images"], output_names=["scores"],
        dynamic_axes={"images": {0: "batch"}, "scores": {0: "batch"}},
    )
