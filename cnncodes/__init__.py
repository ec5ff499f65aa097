"""cnncodes: transfer learning with CNN codes.

Pretrained network -> layer activations ("codes") -> HDF5 code store -> scikit-learn
pipelines, compared with PyTorch fine-tuning. The CLI (``cnncodes``) is a thin layer over
the functions exported here.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .backbones import DEFAULT_MODEL, Backbone, list_backbones, load_backbone  # noqa: E402
from .compare import CompareConfig, CompareResult, compare  # noqa: E402
from .errors import CnnCodesError  # noqa: E402
from .explain import ExplainConfig, explain, gradcam, saliency  # noqa: E402
from .extract import ExtractConfig, ExtractResult, extract  # noqa: E402
from .finetune import FinetuneConfig, FinetuneResult, finetune, load_run, predict_run  # noqa: E402
from .fit import FitConfig, FitResult, fit_pipeline, load_pipeline_module  # noqa: E402
from .layers import CodeExtractor, list_layers, resolve_layer, resolve_layers  # noqa: E402
from .model import FittedModel, load_model  # noqa: E402
from .predict import predict  # noqa: E402
from .report import confusion_table, format_table, per_class_table, run_table  # noqa: E402
from .sources import ImageSource, open_source  # noqa: E402
from .store import CodeStore  # noqa: E402
from .sweep import SweepConfig, SweepResult, sweep  # noqa: E402

__all__ = [
    "DEFAULT_MODEL",
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
    "SweepConfig",
    "SweepResult",
    "__version__",
    "compare",
    "confusion_table",
    "explain",
    "extract",
    "finetune",
    "fit_pipeline",
    "format_table",
    "gradcam",
    "list_backbones",
    "list_layers",
    "load_backbone",
    "load_model",
    "load_pipeline_module",
    "load_run",
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
