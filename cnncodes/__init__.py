"""cnncodes: transfer learning with CNN codes.

Pretrained network -> layer activations ("codes") -> HDF5 code store -> scikit-learn
pipelines, compared with PyTorch fine-tuning. The CLI (``cnncodes``) is a thin layer over
the functions exported here.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .backbones import DEFAULT_MODEL, Backbone, list_backbones, load_backbone  # noqa: E402
from .errors import CnnCodesError  # noqa: E402
from .extract import ExtractConfig, ExtractResult, extract  # noqa: E402
from .layers import CodeExtractor, list_layers, resolve_layer, resolve_layers  # noqa: E402
from .sources import ImageSource, open_source  # noqa: E402
from .store import CodeStore  # noqa: E402

__all__ = [
    "DEFAULT_MODEL",
    "Backbone",
    "CnnCodesError",
    "CodeExtractor",
    "CodeStore",
    "ExtractConfig",
    "ExtractResult",
    "ImageSource",
    "__version__",
    "extract",
    "list_backbones",
    "list_layers",
    "load_backbone",
    "open_source",
    "resolve_layer",
    "resolve_layers",
]
