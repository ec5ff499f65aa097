"""A saved run as one torch module: a preprocessed image batch in, class scores out.

For a ``cnncodes fit`` run the module is the backbone traced up to the code layer (FX node
names kept, so ``explain gradcam --layer`` names the backbone's own layers), the pooling
the extraction used, then the fitted pipeline's steps as tensor operations: scaler,
L2 normaliser, PCA, and a linear classifier (LogisticRegression, the torch
``LinearProbe`` of ``torch_logreg``/``linear_svm``, ``fit --stream``'s SGDClassifier,
LinearSVC) or an MLPClassifier. Scalers, PCA and normaliser run in float32, as
scikit-learn runs them on float32 codes; the classifier runs in float64, as its
``decision_function`` does. A fine-tuned run (``cnncodes finetune``) is its own model.

The module returns *logits*: scores whose softmax is the pipeline's ``predict_proba``
(two classes: ``[-s/2, s/2]`` for the decision score ``s``, whose softmax is the
sigmoid; one-vs-rest probabilities: ``log sigmoid(s)``, whose softmax is scikit-learn's
normalised sigmoids). :class:`RunNet` turns them into exactly the numbers of ``cnncodes
predict``'s ``proba_<class>`` (or ``score_<class>``) columns; :meth:`RunNet.scored` is
that as a module, which ``cnncodes export`` writes and :mod:`cnncodes.probe.serve`
runs. Non-linear pipelines (``rbf_svm``, ``knn``) have no such module: they are refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from ..errors import CnnCodesError
from ..nets.backbones import Backbone, load_backbone
from ..nets.layers import _fx, check_pool
from ..paths import FINETUNE_FILE
from .model import MODEL_FILE, FittedModel, load_model

__all__ = ["RunNet", "SUPPORTED_STEPS", "describe", "dumps", "load_run_net", "probe_head"]

SUPPORTED_STEPS = ("StandardScaler", "Normalizer(l2)", "PCA", "LogisticRegression",
                   "LinearProbe", "SGDClassifier", "LinearSVC", "MLPClassifier")


def _buffer(value: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value), dtype=dtype).clone()


class _Pool(nn.Module):
    """The extraction's pooling of one layer (:func:`cnncodes.nets.layers.pool_codes`), with
    the branch chosen at build time so that FX, TorchScript and ONNX see plain operations."""

    def __init__(self, pool: str, ndim: int) -> None:
        super().__init__()
        self.pool, self.ndim = check_pool(pool), ndim

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if self.ndim <= 2 or self.pool == "none":
            return codes.flatten(1)
        dims = (2, 3) if self.ndim == 4 else (1,)
        if self.pool == "avg":
            return codes.mean(dim=dims)
        if self.pool == "max":
            return codes.amax(dim=dims)
        return torch.cat([codes.mean(dim=dims), codes.amax(dim=dims)], dim=1)


class _Affine(nn.Module):
    """``(x - shift) / scale``: a StandardScaler, in the codes' float32."""

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self, shift: Any, scale: Any, dim: int) -> None:
        super().__init__()
        self.register_buffer("shift", _buffer(np.zeros(dim) if shift is None else shift, torch.float32))
        self.register_buffer("scale", _buffer(np.ones(dim) if scale is None else scale, torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class _L2(nn.Module):
    """scikit-learn's ``Normalizer(norm="l2")``: rows of norm 0 stay as they are."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norms = x.norm(dim=1, keepdim=True)
        return x / torch.where(norms == 0, torch.ones_like(norms), norms)


class _Projection(nn.Module):
    """PCA's transform: ``x @ W.T - mean @ W.T``, then whitening."""

    weight: torch.Tensor
    offset: torch.Tensor
    scale: torch.Tensor

    def __init__(self, pca: Any) -> None:
        super().__init__()
        components = np.asarray(pca.components_)
        scale = np.ones(len(components))
        if pca.whiten:
            scale = np.sqrt(np.asarray(pca.explained_variance_, dtype=components.dtype))
            scale[scale < np.finfo(scale.dtype).eps] = np.finfo(scale.dtype).eps
        self.register_buffer("weight", _buffer(components, torch.float32))
        self.register_buffer("offset", _buffer(np.asarray(pca.mean_) @ components.T, torch.float32))
        self.register_buffer("scale", _buffer(scale, torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.weight.T - self.offset) / self.scale


class _Linear(nn.Module):
    """A linear classifier's decision function, in float64, turned into logits."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, coef: Any, intercept: Any, link: str) -> None:
        super().__init__()
        self.register_buffer("weight", _buffer(np.atleast_2d(coef), torch.float64))
        self.register_buffer("bias", _buffer(np.ravel(intercept), torch.float64))
        self.link = link  # "multinomial", "binary" or "ovr"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = x.double() @ self.weight.T + self.bias
        return _link(scores, self.link)


def _link(scores: torch.Tensor, link: str) -> torch.Tensor:
    if link == "binary":  # softmax([-s/2, s/2]) = [1 - sigmoid(s), sigmoid(s)]
        return torch.cat([-scores / 2, scores / 2], dim=1)
    if link == "ovr":  # softmax(log sigmoid(s)) = sigmoid(s) / sum of sigmoid(s)
        return nn.functional.logsigmoid(scores)
    return scores


class _Perceptron(nn.Module):
    """An MLPClassifier's forward pass, in float64, its output layer as logits."""

    def __init__(self, mlp: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            _Linear(np.asarray(w).T, b, "multinomial")
            for w, b in zip(mlp.coefs_, mlp.intercepts_, strict=True)
        )
        self.activation = str(mlp.activation)
        self.binary = mlp.out_activation_ == "logistic"
        if self.activation not in ("identity", "tanh", "logistic", "relu"):
            raise CnnCodesError(f"MLPClassifier activation {self.activation!r} is not supported.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < last:
                x = _activate(x, self.activation)
        return _link(x, "binary" if self.binary else "multinomial")


def _activate(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "relu":
        return torch.relu(x)
    if name == "tanh":
        return torch.tanh(x)
    if name == "logistic":
        return torch.sigmoid(x)
    return x


def _step_module(name: str, step: Any, dim: int) -> nn.Module:
    """One pipeline step as a module; a CnnCodesError for anything not linear or MLP."""
    kind = type(step).__name__
    if kind == "StandardScaler":
        return _Affine(step.mean_, step.scale_, dim)
    if kind == "Normalizer" and step.norm == "l2":
        return _L2()
    if kind == "PCA":
        return _Projection(step)
    if kind == "MLPClassifier":
        return _Perceptron(step)
    if kind in ("LogisticRegression", "LinearProbe", "SGDClassifier", "LinearSVC"):
        return _Linear(step.coef_, step.intercept_, _link_of(step))
    raise CnnCodesError(
        f"Pipeline step {name!r} ({kind}) has no torch equivalent; explain, export and "
        f"load_predictor support {', '.join(SUPPORTED_STEPS)} (fit --clf logreg, "
        "torch_logreg, linear_svm or mlp); use 'cnncodes predict' for this run."
    )


def _link_of(classifier: Any) -> str:
    if len(classifier.classes_) == 2:
        return "binary"
    multinomial = type(classifier).__name__ in ("LogisticRegression", "LinearProbe")
    if multinomial and getattr(classifier, "multi_class", "auto") in ("auto", "multinomial", "deprecated"):
        return "multinomial"
    # SGDClassifier (and a one-vs-rest LogisticRegression) normalise per-class sigmoids;
    # for scores without probabilities the link is unused.
    return "ovr" if hasattr(classifier, "predict_proba") else "multinomial"


def probe_head(pipeline: Any, dim: int) -> nn.Sequential:
    """The fitted pipeline (or single estimator) on ``dim``-d codes as a torch module.

    Raises:
        CnnCodesError: a step other than :data:`SUPPORTED_STEPS`.
    """
    steps = list(pipeline.steps) if hasattr(pipeline, "steps") else [("classifier", pipeline)]
    modules = []
    for name, step in steps:
        if step is None or step == "passthrough":
            continue
        modules.append(_step_module(name, step, dim))
        dim = int(getattr(step, "n_components_", dim))
    return nn.Sequential(*modules)


@dataclass
class RunNet:
    """A run as a torch module and what its outputs mean.

    Attributes:
        backbone: the module as a :class:`Backbone` (``model``: preprocessed images
            ``[N, 3, H, W]`` -> logits ``[N, K]``; ``transform``: PIL image -> input;
            ``categories``: the run's classes), ready for the explainers.
        classes: class names in output order.
        kind: ``fit`` or ``finetune``.
        probabilities: whether the run predicts probabilities (``proba_<class>``
            columns) or only decision scores (``score_<class>``).
        columns: the ``cnncodes predict`` columns :meth:`scored` returns, in order.
    """

    backbone: Backbone
    classes: list[str]
    kind: str
    probabilities: bool
    columns: list[str]

    def scored(self) -> nn.Module:
        """The module ``images -> the predict columns`` (what ``cnncodes export`` writes)."""
        binary_scores = not self.probabilities and len(self.columns) == 1
        return _Scored(self.backbone.model, self.probabilities, binary_scores).eval()


class _Scored(nn.Module):
    def __init__(self, net: nn.Module, probabilities: bool, binary_scores: bool) -> None:
        super().__init__()
        self.net, self.probabilities, self.binary_scores = net, probabilities, binary_scores

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.net(images).double()  # a fit run's classifier is float64 already
        if self.probabilities:
            return logits.softmax(dim=1)
        if self.binary_scores:  # the decision score s of the second class, from [-s/2, s/2]
            return logits[:, 1:] * 2
        return logits


def load_run_net(run: str | os.PathLike[str], *, trusted: tuple[str, ...] = ()) -> RunNet:
    """The run folder (``cnncodes fit`` or ``cnncodes finetune``) as one torch module.

    Raises:
        CnnCodesError: not a run, a pipeline with a non-linear step (``rbf_svm``, ``knn``),
            or backbone weights other than the run's.
    """
    folder = Path(run)
    if (folder / FINETUNE_FILE).is_file():
        return _finetuned(folder)
    if folder.is_dir() and not (folder / MODEL_FILE).is_file():
        raise CnnCodesError(
            f"{str(folder)!r} is not a run: it holds neither {MODEL_FILE} ('cnncodes fit') nor "
            f"{FINETUNE_FILE} ('cnncodes finetune'); give a run folder one of them wrote."
        )
    return _fitted(load_model(folder, trusted=trusted))


def _finetuned(folder: Path) -> RunNet:
    from ..finetuning.finetune import load_run

    model, transform, classes, config = load_run(folder)
    timm_modules = any(type(m).__module__.startswith("timm") for m in model.modules())
    backbone = Backbone(
        name=str(config.get("model", folder.name)), model=model.eval(), transform=transform,
        weights=f"run:{folder.resolve()}", weights_sha256="",
        family="timm" if timm_modules else "torchvision", categories=list(classes),
    )
    return RunNet(backbone, list(classes), "finetune", True, [f"proba_{c}" for c in classes])


def _fitted(model: FittedModel) -> RunNet:
    meta = model.metadata
    weights = str(meta["weights"])
    backbone = load_backbone(str(meta["backbone"]), weights.removeprefix("file:"))
    theirs, ours = str(meta.get("weights_sha256") or ""), backbone.weights_sha256
    if theirs and ours and theirs != ours:
        raise CnnCodesError(
            f"Run {str(model.run_dir)!r} was fitted on codes of weights with sha256 "
            f"{theirs[:12]}... but {weights!r} now has {ours[:12]}...; restore those weights "
            "or fit the run again."
        )
    body = _trunk(backbone, model.layer)
    with torch.inference_mode():
        code = body(torch.zeros(1, 3, backbone.input_size, backbone.input_size))["code"]
    head = nn.Sequential(_Pool(str(meta["pooling"]), code.ndim),
                         *probe_head(model.pipeline, int(meta["code_dim"])))
    net = _attach(body, head)
    classes = model.classes
    known = [classes[int(i)] for i in model.pipeline.classes_]
    probabilities = hasattr(model.pipeline, "predict_proba")
    columns = ([f"proba_{c}" for c in known] if probabilities
               else [f"score_{known[1]}"] if len(known) == 2 else [f"score_{c}" for c in known])
    categories = Backbone(
        name=backbone.name, model=net, transform=backbone.transform, weights=backbone.weights,
        weights_sha256=backbone.weights_sha256, family=backbone.family, categories=known,
    )
    return RunNet(categories, known, "fit", probabilities, columns)


def _trunk(backbone: Backbone, layer: str) -> fx.GraphModule:
    """The backbone's eval graph up to ``layer``, as a plain GraphModule (one graph)."""
    extractor = _fx(backbone).create_feature_extractor(
        backbone.model, return_nodes={layer: "code"}
    ).eval()
    return fx.GraphModule(extractor, extractor.graph).eval()


def _attach(body: fx.GraphModule, head: nn.Module) -> fx.GraphModule:
    """``body``'s graph with ``head`` applied to its ``code`` output, as one GraphModule."""
    graph = body.graph
    output = next(node for node in graph.nodes if node.op == "output")
    code = output.args[0]["code"]
    body.add_submodule("probe", head)
    with graph.inserting_before(output):
        logits = graph.call_module("probe", (code,))
    output.args = (logits,)
    graph.lint()
    body.recompile()
    return body.eval()


def describe(net: RunNet) -> dict[str, Any]:
    """What an exported module expects and returns, as written beside the export."""
    transform = net.backbone.transform
    preprocessing = {key: _plain(getattr(transform, key)) for key in (
        "resize_size", "crop_size", "interpolation", "mean", "std", "antialias")
        if hasattr(transform, key)}
    return {
        "format": "cnncodes-export/1", "kind": net.kind, "classes": net.classes,
        "outputs": net.columns,
        "output": ("probabilities" if net.probabilities else "decision scores")
                  + " as float64 [N, len(outputs)]",
        "input": "float32 [N, 3, H, W]: RGB decoded to 8 bits, resized and centre-cropped, "
                 "divided by 255, minus mean, over std (the preprocessing below)",
        "preprocessing": preprocessing or str(transform),
    }


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(getattr(value, "value", value))


def dumps(info: dict[str, Any]) -> str:
    return json.dumps(info, indent=2)
