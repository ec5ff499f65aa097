"""cnncodes: transfer learning with CNN codes.

Pretrained network -> layer activations ("codes") -> HDF5 code store -> scikit-learn
pipelines, compared with PyTorch fine-tuning. The CLI (``cnncodes``) is a thin layer over
the functions exported here.

The package follows the data, one sub-package per step:

- ``data``        image sources (folders, CSV manifests, idx files, ``sklearn:digits``),
                  decoding and the bad-file policy, validation carve-outs, the HDF5 store
- ``nets``        backbones, weights and preprocessing, layer names, head surgery
- ``extraction``  batched, device-aware, resumable extraction from a source into a store
- ``probe``       scikit-learn pipelines on the codes: search, fit, safe persistence, predict,
                  a run as one torch module (export, in-memory predictor)
- ``finetuning``  strategies 3 and 4 in PyTorch and the training loop
- ``explainers``  saliency, Grad-CAM, integrated gradients, activation grids, filters, figures,
                  activation maximisation and DeepDream
- ``studies``     the four-strategy comparison, the advisor, the layer sweep, reports
- ``cli``         the ``cnncodes`` command: one module per command group

Beside them: ``errors`` (the one user-facing exception), ``paths`` (default output
folders, output checks, locks), ``progress`` (stderr progress), ``runtime`` (device and
precision set-up) and ``_version``. Imports point down this list, never up or in a circle.

Public names are loaded on first use (PEP 562), so ``import cnncodes`` and ``cnncodes
--help`` do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# Public name -> the module (under cnncodes) that defines it.
_EXPORTS = {
    "ImageSource": "data.sources",
    "open_source": "data.sources",
    "CodeStore": "data.store",
    "CnnCodesError": "errors",
    "ExplainConfig": "explainers.explain",
    "explain": "explainers.explain",
    "gradcam": "explainers.explain",
    "integrated_gradients": "explainers.explain",
    "saliency": "explainers.explain",
    "deep_dream": "explainers.maximize",
    "maximize_activation": "explainers.maximize",
    "ExtractConfig": "extraction.extract",
    "ExtractResult": "extraction.extract",
    "extract": "extraction.extract",
    "FinetuneConfig": "finetuning.finetune",
    "FinetuneResult": "finetuning.finetune",
    "finetune": "finetuning.finetune",
    "load_run": "finetuning.finetune",
    "predict_run": "finetuning.finetune",
    "Backbone": "nets.backbones",
    "DEFAULT_MODEL": "nets.backbones",
    "list_backbones": "nets.backbones",
    "load_backbone": "nets.backbones",
    "CodeExtractor": "nets.layers",
    "list_layers": "nets.layers",
    "resolve_layer": "nets.layers",
    "resolve_layers": "nets.layers",
    "FitConfig": "probe.fit",
    "FitResult": "probe.fit",
    "fit_pipeline": "probe.fit",
    "load_pipeline_module": "probe.fit",
    "StreamConfig": "probe.stream",
    "fit_streamed": "probe.stream",
    "FittedModel": "probe.model",
    "load_model": "probe.model",
    "predict": "probe.predict",
    "export_run": "probe.export",
    "Predictor": "probe.serve",
    "load_predictor": "probe.serve",
    "Advice": "studies.advise",
    "AdviseConfig": "studies.advise",
    "advise": "studies.advise",
    "CompareConfig": "studies.compare",
    "CompareResult": "studies.compare",
    "compare": "studies.compare",
    "confusion_table": "studies.report",
    "format_table": "studies.report",
    "per_class_table": "studies.report",
    "run_table": "studies.report",
    "SweepConfig": "studies.sweep",
    "SweepResult": "studies.sweep",
    "sweep": "studies.sweep",
}

__all__ = [
    "DEFAULT_MODEL",
    "AdviseConfig",
    "Advice",
    "Backbone",
    "CnnCodesError",
    "CodeExtractor",
    "CodeStore",
    "CompareConfig",
    "CompareResult",
    "ExplainConfig",
    "ExtractConfig",
    "ExtractResult",
    "FinetuneConfig",
    "FinetuneResult",
    "FitConfig",
    "FitResult",
    "FittedModel",
    "ImageSource",
    "Predictor",
    "StreamConfig",
    "SweepConfig",
    "SweepResult",
    "__version__",
    "advise",
    "compare",
    "confusion_table",
    "deep_dream",
    "explain",
    "export_run",
    "extract",
    "finetune",
    "fit_pipeline",
    "fit_streamed",
    "format_table",
    "gradcam",
    "integrated_gradients",
    "list_backbones",
    "list_layers",
    "load_backbone",
    "load_model",
    "load_pipeline_module",
    "load_predictor",
    "load_run",
    "maximize_activation",
    "open_source",
    "per_class_table",
    "predict",
    "predict_run",
    "resolve_layer",
    "resolve_layers",
    "run_table",
    "saliency",
    "sweep",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cnncodes' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static checkers see the real names
    from .data.sources import ImageSource, open_source
    from .data.store import CodeStore
    from .errors import CnnCodesError
    from .explainers.explain import ExplainConfig, explain, gradcam, integrated_gradients, saliency
    from .explainers.maximize import deep_dream, maximize_activation
    from .extraction.extract import ExtractConfig, ExtractResult, extract
    from .finetuning.finetune import FinetuneConfig, FinetuneResult, finetune, load_run, predict_run
    from .nets.backbones import DEFAULT_MODEL, Backbone, list_backbones, load_backbone
    from .nets.layers import CodeExtractor, list_layers, resolve_layer, resolve_layers
    from .probe.export import export_run
    from .probe.fit import FitConfig, FitResult, fit_pipeline, load_pipeline_module
    from .probe.model import FittedModel, load_model
    from .probe.predict import predict
    from .probe.serve import Predictor, load_predictor
    from .probe.stream import StreamConfig, fit_streamed
    from .studies.advise import Advice, AdviseConfig, advise
    from .studies.compare import CompareConfig, CompareResult, compare
    from .studies.report import confusion_table, format_table, per_class_table, run_table
    from .studies.sweep import SweepConfig, SweepResult, sweep
