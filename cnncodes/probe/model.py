"""A fitted pipeline on disk: ``model.skops`` + ``metadata.json`` in one run folder.

The pipeline is saved with skops, which rebuilds objects from a description instead of
running pickle's arbitrary code. skops alone still trusts whatever a file names that
looks like scikit-learn (``sklearn.utils._testing`` re-exports ``subprocess.check_output``),
so :func:`load_model` first reads the description itself and accepts only the exact
types, and the node kinds, that the shipped pipelines produce (:data:`ALLOWED_TYPES`);
anything else needs an explicit ``trusted=[...]`` (``--trust NAME`` on the command
line). The metadata records where the codes came from (backbone, weights, layer,
pooling, preprocessing, code dimension, store fingerprint) and the run format
(``format_version``); codes from anywhere else are refused, never silently scored.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.neighbors import KDTree, KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelBinarizer, Normalizer, StandardScaler
from sklearn.svm import SVC, LinearSVC

from ..data.store import CodeStore
from ..errors import CnnCodesError
from ..paths import PREDICTIONS_FILE
from .linear import LinearProbe

__all__ = ["FittedModel", "load_model", "save_model", "MODEL_FILE", "METADATA_FILE",
           "PREDICTIONS_FILE", "FORMAT_VERSION", "ALLOWED_TYPES", "untrusted_types"]

MODEL_FILE = "model.skops"
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 2  # of a run folder; runs before it have no format_version

# The code-store attributes that must match between training and scoring codes.
PROVENANCE = ("backbone", "weights", "pooling", "preprocessing")
REQUIRED_METADATA = ("classes", "layer", "code_dim", *PROVENANCE)


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _internal_types() -> list[type]:
    """scikit-learn internals inside fitted k-NN and MLP models (private import paths)."""
    found = []
    for module, name in (("sklearn.metrics._dist_metrics", "EuclideanDistance64"),
                         ("sklearn.neural_network._stochastic_optimizers", "AdamOptimizer")):
        # Another scikit-learn may move them; then they are simply not allowed.
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(importlib.import_module(module), name))
    return found


_NUMPY_SCALARS = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                  np.uint32, np.uint64, np.float16, np.float32, np.float64)

# Every (skops node kind -> full type names) that `cnncodes fit` writes for the shipped
# pipelines (logreg, torch_logreg, linear_svm, rbf_svm, mlp, knn, with --pca and --l2norm,
# and fit --stream's SGDClassifier, saved without its compiled loss object): found by
# fitting each and listing the types in its skops file. Function, method, partial and
# constructor-call nodes are never needed, so none is allowed.
ALLOWED_TYPES: dict[str, frozenset[str]] = {
    "ObjectNode": frozenset(_type_name(t) for t in (
        Pipeline, StandardScaler, Normalizer, PCA, LogisticRegression, LinearSVC, SVC,
        MLPClassifier, KNeighborsClassifier, KDTree, LabelBinarizer, LinearProbe,
        SGDClassifier,
        *_internal_types(),
    )),
    "NdArrayNode": frozenset([_type_name(np.ndarray), *map(_type_name, _NUMPY_SCALARS)]),
    "RandomStateNode": frozenset([_type_name(np.random.RandomState)]),
    "DictNode": frozenset(["builtins.dict"]),
    "ListNode": frozenset(["builtins.list"]),
    "TupleNode": frozenset(["builtins.tuple"]),
    "JsonNode": frozenset(["builtins.str"]),  # every JSON value is written with this name
    "TypeNode": frozenset(["builtins.str", "builtins.int"]),  # types of dict keys
    "CachedNode": frozenset(),  # a second reference: any name, checked where first seen
}


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def save_model(run_dir: Path, pipeline: Pipeline, metadata: dict[str, Any]) -> Path:
    """Write the fitted pipeline and its metadata (with ``format_version``) into ``run_dir``.

    Returns:
        The path of ``model.skops``.
    """
    import skops.io

    run_dir.mkdir(parents=True, exist_ok=True)
    model_path = run_dir / MODEL_FILE
    _write_atomic(model_path, skops.io.dumps(pipeline))
    metadata = {"format_version": FORMAT_VERSION,
                **{key: value for key, value in metadata.items() if key != "format_version"}}
    _write_atomic(run_dir / METADATA_FILE, json.dumps(metadata, indent=2, default=str).encode())
    return model_path


@dataclass
class FittedModel:
    """A loaded run: the fitted pipeline and the metadata it was saved with."""

    run_dir: Path
    pipeline: Pipeline
    metadata: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])

    @property
    def layer(self) -> str:
        return str(self.metadata["layer"])

    def check_store(self, store: CodeStore) -> str:
        """The store layer to score, after checking it holds the same kind of codes.

        Raises:
            CnnCodesError: another backbone, weights, pooling, preprocessing, layer or
                code dimension than the model was fitted on.
        """
        meta, attrs = self.metadata, store.attrs
        fix = (
            f"extract codes with the model's settings: cnncodes extract SOURCE --model "
            f"{meta['backbone']} --weights {_weights_argument(meta['weights'])} "
            f"--layer {meta['layer']} --pool {meta['pooling']} (or give images to "
            "'cnncodes predict' and it does so)"
        )
        for key in PROVENANCE:
            if str(attrs.get(key)) != str(meta.get(key)):
                raise CnnCodesError(
                    f"Model {str(self.run_dir)!r} was fitted on {key} {meta.get(key)!r} but "
                    f"store {store.path.name!r} has {key} {attrs.get(key)!r}; {fix}."
                )
        theirs, ours = attrs.get("weights_sha256") or "", meta.get("weights_sha256") or ""
        if theirs and ours and theirs != ours:
            raise CnnCodesError(
                f"Model {str(self.run_dir)!r} was fitted on codes from weights with sha256 "
                f"{ours[:12]}... but store {store.path.name!r} used {theirs[:12]}...; {fix}."
            )
        if self.layer not in store.layers:
            raise CnnCodesError(
                f"Model {str(self.run_dir)!r} was fitted on layer {self.layer!r} but store "
                f"{store.path.name!r} holds {', '.join(store.layers)}; {fix}."
            )
        dim = store.dim(self.layer)
        if dim != int(meta["code_dim"]):
            raise CnnCodesError(
                f"Model {str(self.run_dir)!r} expects {meta['code_dim']}-d codes of layer "
                f"{self.layer!r} but store {store.path.name!r} has {dim}-d codes; {fix}."
            )
        return self.layer

    def codes(self, store: CodeStore) -> np.ndarray:
        """The store's codes for this model, after :meth:`check_store`."""
        return store.codes(self.check_store(store))


def _weights_argument(weights: str) -> str:
    return weights.removeprefix("file:") if weights.startswith("file:") else weights


def _nodes(state: Any) -> Iterator[dict[str, Any]]:
    """Every object description in a skops schema, wherever it is nested."""
    stack = [state]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "__loader__" in item:
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _node_name(node: dict[str, Any]) -> str:
    name = f"{node.get('__module__')}.{node.get('__class__')}"
    if node.get("__loader__") == "MethodNode":  # a bound method: the method is what runs
        content = node.get("content")
        name += f".{content.get('func') if isinstance(content, dict) else None}"
    return name


def _schema_nodes(data: bytes) -> list[dict[str, Any]]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError) as error:
        raise ValueError(f"not a skops file: {error}") from None
    return list(_nodes(schema))


def untrusted_types(data: bytes, trusted: Sequence[str] = ()) -> list[str]:
    """Names in a skops file that :func:`load_model` refuses unless they are ``trusted``.

    Reads the file's description only; nothing in it is imported or constructed.

    Raises:
        ValueError: not a skops file.
    """
    refused = set()
    for node in _schema_nodes(data):
        loader, name = node.get("__loader__"), _node_name(node)
        if loader == "CachedNode" or name in ALLOWED_TYPES.get(str(loader), ()):
            continue
        # A name allowed as another kind of node is listed with the kind it came as.
        allowed_elsewhere = any(name in names for names in ALLOWED_TYPES.values())
        listed = f"{name} (as {loader})" if allowed_elsewhere else name
        if name not in trusted and listed not in trusted:
            refused.add(listed)
    return sorted(refused)


def _read_metadata(run: Path, metadata_path: Path) -> dict[str, Any]:
    try:
        metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CnnCodesError(
            f"Run {str(run)!r} has an unreadable {METADATA_FILE} ({error}); fit it again."
        ) from None
    if not isinstance(metadata, dict):
        raise CnnCodesError(
            f"Run {str(run)!r} has a {METADATA_FILE} that is not a JSON object; fit it again."
        )
    version = metadata.get("format_version")
    refit = f"re-fit it with this cnncodes ({_refit_command(metadata)})"
    if version is None or type(version) is not int:
        raise CnnCodesError(
            f"Run {str(run)!r} was written by an older cnncodes ({METADATA_FILE} has no "
            f"format_version; this one reads version {FORMAT_VERSION}); {refit}."
        )
    if version != FORMAT_VERSION:
        age = "an older" if version < FORMAT_VERSION else "a newer"
        raise CnnCodesError(
            f"Run {str(run)!r} has format_version {version}, from {age} cnncodes (this one "
            f"reads {FORMAT_VERSION}); {refit}."
        )
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    classes, code_dim = metadata.get("classes"), metadata.get("code_dim")
    if (
        missing or not isinstance(classes, list) or not classes
        or not all(isinstance(c, str) for c in classes)
        or not isinstance(metadata.get("layer"), str)
        or type(code_dim) is not int or code_dim < 1
    ):
        what = f"lacks {', '.join(missing)}" if missing else "has malformed classes, layer or code_dim"
        raise CnnCodesError(f"Run {str(run)!r}: {METADATA_FILE} {what}; {refit}.")
    return metadata


def _refit_command(metadata: dict[str, Any]) -> str:
    store = (metadata.get("store") or {}).get("path") if isinstance(metadata.get("store"), dict) else None
    clf = metadata.get("pipeline_source") or metadata.get("pipeline")
    if not store or not clf:
        return "cnncodes fit STORE --clf ... --out RUN"
    clf = str(clf).removeprefix("cnncodes.pipelines.")
    command = f"cnncodes fit {store} --clf {clf}"
    if metadata.get("layer_spec") is not None:
        command += f" --layer {metadata['layer_spec']}"
    if metadata.get("pca"):
        command += f" --pca {metadata['pca']}"
    if metadata.get("l2norm"):
        command += " --l2norm"
    return command


def _user_pipeline_file(metadata: dict[str, Any]) -> str | None:
    source = str(metadata.get("pipeline_source") or "")
    return None if not source or source.startswith("cnncodes.pipelines.") else source


def load_model(run_dir: str | os.PathLike[str], *, trusted: Sequence[str] = ()) -> FittedModel:
    """Load a run folder written by :func:`cnncodes.fit_pipeline`.

    Only the exact types that the shipped pipelines produce are rebuilt
    (:data:`ALLOWED_TYPES`); nothing named in the files is imported before that check,
    and a user's pipeline file recorded in the metadata is never imported.

    Args:
        run_dir: the run folder (or its ``model.skops`` file).
        trusted: further names to load, as the refusal lists them, for a run made with
            your own ``--clf my_pipeline.py`` (``--trust NAME`` on the command line).
            Only for runs you made yourself or otherwise trust: a trusted name can run
            code.

    Raises:
        CnnCodesError: not a run folder, an old or unreadable run, types that are not
            allowed, or a model that does not match its metadata.
    """
    import skops.io

    path = Path(run_dir)
    if path.is_file() and path.name == MODEL_FILE:
        path = path.parent
    model_path, metadata_path = path / MODEL_FILE, path / METADATA_FILE
    if not model_path.is_file() or not metadata_path.is_file():
        raise CnnCodesError(
            f"{str(run_dir)!r} is not a fitted run (expected {MODEL_FILE} and "
            f"{METADATA_FILE} inside); create one with 'cnncodes fit'."
        )
    metadata = _read_metadata(path, metadata_path)
    trusted = [str(name) for name in trusted]
    try:
        data = model_path.read_bytes()  # audited and loaded from the same bytes
        refused = untrusted_types(data, trusted)
    except (OSError, ValueError) as error:
        raise CnnCodesError(
            f"Run {str(path)!r} has an unreadable {MODEL_FILE} ({error}); fit it again."
        ) from None
    if refused:
        user_file = _user_pipeline_file(metadata)
        origin = f" (it was fitted with your pipeline file {user_file!r})" if user_file else ""
        raise CnnCodesError(
            f"Run {str(path)!r} holds types that cnncodes does not load by default{origin}: "
            f"{', '.join(refused)}; only if you made this run or trust it, pass --trust NAME "
            "for each (load_model(run, trusted=[...]) in Python)."
        )
    try:
        # skops is told to trust exactly the names just checked, on top of its defaults:
        # should it see anything else in the same bytes, it refuses too.
        present = sorted({_node_name(node) for node in _schema_nodes(data)})
        pipeline = skops.io.loads(data, trusted=present)
    except Exception as error:  # a damaged file, or a trusted type that cannot be imported
        raise CnnCodesError(
            f"Run {str(path)!r}: {MODEL_FILE} could not be loaded "
            f"({error.__class__.__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            "fit it again."
        ) from None
    _check_pipeline(path, pipeline, metadata)
    return FittedModel(path, pipeline, metadata)


def _check_pipeline(run: Path, pipeline: Any, metadata: dict[str, Any]) -> None:
    """The loaded model is a fitted Pipeline that fits its metadata (classes, code size)."""
    problem = None
    if not isinstance(pipeline, Pipeline):
        problem = f"holds a {type(pipeline).__name__}, not a scikit-learn Pipeline"
    else:
        classes = getattr(pipeline, "classes_", None)
        features = getattr(pipeline, "n_features_in_", metadata["code_dim"])
        n_classes = len(metadata["classes"])
        try:
            values = np.asarray(classes)
            bad_classes = (classes is None or values.ndim != 1
                           or not np.issubdtype(values.dtype, np.integer)
                           or ((values < 0) | (values >= n_classes)).any())
        except (TypeError, ValueError):
            bad_classes = True
        if bad_classes:
            problem = f"predicts classes {classes!r}, not indices of the {n_classes} classes in {METADATA_FILE}"
        elif features != metadata["code_dim"]:
            problem = f"expects {features}-d codes but {METADATA_FILE} says {metadata['code_dim']}"
    if problem is None:
        problem = _rebuild_search_trees(pipeline)
    if problem:
        raise CnnCodesError(f"Run {str(run)!r}: {MODEL_FILE} {problem}; fit it again.")


def _rebuild_search_trees(pipeline: Pipeline) -> str | None:
    """Rebuild each k-NN search tree from the training codes it was saved with.

    A KDTree's saved index arrays are used by compiled code without bounds checks (skops
    does not trust the type for that reason), and a tree from other data would silently
    change every prediction; rebuilding takes milliseconds. Returns a problem, or None.
    """
    for name, step in pipeline.steps:
        if not isinstance(step, KNeighborsClassifier) or not hasattr(step, "_fit_X"):
            continue
        X, y = np.asarray(step._fit_X), np.asarray(getattr(step, "_y", []))
        if (X.ndim != 2 or X.dtype.kind != "f" or y.shape != (len(X),) or y.dtype.kind not in "iu"
                or ((y < 0) | (y >= len(step.classes_))).any()):
            return f"holds a k-NN step {name!r} whose training codes and labels do not agree"
        if isinstance(getattr(step, "_tree", None), KDTree):
            try:
                step._tree = KDTree(X, step.leaf_size, metric=step.effective_metric_,
                                    **step.effective_metric_params_)
            except (TypeError, ValueError) as error:
                return f"holds a k-NN step {name!r} that cannot be rebuilt ({error})"
    return None
