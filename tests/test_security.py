"""Files a user brings must not run code: hostile model.skops, metadata.json and .pth files.

Every hostile file here carries a live payload that creates a marker file; each test first
shows what cnncodes does (one clear error, no marker), and where it helps, a positive
control shows that the payload really runs when the file is loaded without the checks.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from cnncodes import CnnCodesError, CodeStore, fit_pipeline, load_backbone, load_model, predict
from cnncodes.cli import main
from cnncodes.data.store import PartWriter, assemble_store
from cnncodes.pipelines import NAMES
from cnncodes.probe.model import ALLOWED_TYPES, untrusted_types
from tests.conftest import write_image_folder

DIM, CLASSES = 12, ("a", "b", "c")


@dataclass
class _Item:
    path: str
    label: int
    split: str


def _synthetic_store(folder: Path, n_classes: int = 3) -> Path:
    """A code store of separable random codes (train 60, val 30) without any network."""
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3.0, size=(n_classes, DIM))
    items, codes = [], []
    for split, count in (("train", 60), ("val", 30)):
        for i in range(count):
            label = i % n_classes
            items.append(_Item(f"{split}/{CLASSES[label]}/{i}.jpg", label, split))
            codes.append(centres[label] + rng.normal(size=DIM))
    writer = PartWriter(folder / "codes.h5.parts", {"store_key": "synthetic"})
    writer.write(0, len(items), range(len(items)), {"feat": np.asarray(codes)}, [])
    attrs = {"cnncodes_version": "test", "backbone": "synthetic", "weights": "none",
             "weights_sha256": "", "pooling": "avg", "preprocessing": "none",
             "layers": ["feat"], "layer_specs": ["-2"], "store_key": "synthetic"}
    return assemble_store(writer, folder / "codes.h5", layers=["feat"], dims={"feat": DIM},
                          items=items, classes=list(CLASSES[:n_classes]), has_split=True,
                          attrs=attrs)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _synthetic_store(tmp_path_factory.mktemp("security"))


@pytest.fixture(scope="module")
def good_run(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "logreg"
    return fit_pipeline(store, clf="logreg", out=out, progress=False).run_dir


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """The file a payload creates; it must never exist after cnncodes read the file."""
    return tmp_path / "PWNED"


def _hostile_run(good_run: Path, tmp_path: Path, model: bytes,
                 metadata: dict[str, Any] | None = None) -> Path:
    run = tmp_path / "hostile-run"
    shutil.copytree(good_run, run)
    (run / "model.skops").write_bytes(model)
    if metadata is not None:
        (run / "metadata.json").write_text(json.dumps(metadata))
    return run


def _edit_schema(data: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """Rewrite schema.json inside a skops zip, as an attacker with a text editor would."""
    source = zipfile.ZipFile(io.BytesIO(data))
    schema = json.loads(source.read("schema.json"))
    edit(schema)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            content = json.dumps(schema) if name == "schema.json" else source.read(name)
            target.writestr(name, content)
    return out.getvalue()


def _find(schema: Any, test: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if test(item):
                return item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    raise LookupError("node not found")


def _json_node(value: Any) -> dict[str, Any]:
    return {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode",
            "content": json.dumps(value), "is_json": True}


def _node_of(function: Callable) -> Callable[[dict[str, Any]], bool]:
    return lambda node: (node.get("__loader__") == "FunctionNode"
                         and node.get("__class__") == function.__name__)


def _fitted_tail() -> LogisticRegression:
    return LogisticRegression().fit(np.eye(DIM)[:3], [0, 1, 2])


def _assert_refused_everywhere(run: Path, store: Path, marker: Path, names: list[str],
                               runner) -> str:
    """load_model, predict and the CLI all refuse the run in one line; nothing ran."""
    with pytest.raises(CnnCodesError) as error:
        load_model(run)
    message = str(error.value)
    assert "\n" not in message and "--trust NAME" in message
    for name in names:
        assert name in message
    with pytest.raises(CnnCodesError, match="does not load by default"):
        predict(run, store, progress=False)
    result = runner.invoke(main, ["predict", str(run), str(store)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert result.output.startswith("Error: ") and result.output.strip().count("\n") == 0
    assert not marker.exists(), "the payload ran"
    return message


# --- the allow-list holds what `cnncodes fit` writes, and nothing more ----------------------


@pytest.mark.parametrize("clf", NAMES)
@pytest.mark.parametrize("extras", [{}, {"pca": 4, "l2norm": True}])
def test_every_shipped_pipeline_saves_and_loads(store: Path, tmp_path: Path, clf: str,
                                                extras: dict[str, Any]) -> None:
    result = fit_pipeline(store, clf=clf, out=tmp_path / "run", progress=False, **extras)
    data = (result.run_dir / "model.skops").read_bytes()
    assert untrusted_types(data) == []
    model = load_model(result.run_dir)
    assert [name for name, _ in model.pipeline.steps][-1] == "classifier"
    frame = predict(result.run_dir, store, progress=False)
    assert len(frame) == 90 and (frame["predicted"] == frame["label"]).mean() > 0.9
    assert json.loads((result.run_dir / "metadata.json").read_text())["format_version"] == 2


def test_binary_pipelines_load_too(tmp_path: Path) -> None:
    store = _synthetic_store(tmp_path, n_classes=2)
    for clf in NAMES:
        run = fit_pipeline(store, clf=clf, out=tmp_path / clf, progress=False).run_dir
        assert load_model(run).classes == ["a", "b"]


def test_allow_list_is_exact() -> None:
    objects = ALLOWED_TYPES["ObjectNode"]
    assert "sklearn.pipeline.Pipeline" in objects
    assert "sklearn.preprocessing._function_transformer.FunctionTransformer" not in objects
    assert not any(name.startswith("sklearn.utils") for name in objects)
    for kind in ("FunctionNode", "MethodNode", "PartialNode", "ConstructorFromReduceNode",
                 "OperatorFuncNode", "ReduceNode"):
        assert kind not in ALLOWED_TYPES


def test_allowed_name_as_another_kind_of_node_is_refused(good_run: Path) -> None:
    """An allowed type is allowed only as the node kind fit writes it as."""

    def as_call(schema: dict[str, Any]) -> None:
        node = _find(schema, lambda n: n.get("__class__") == "StandardScaler")
        node["__loader__"] = "ConstructorFromReduceNode"

    data = _edit_schema((good_run / "model.skops").read_bytes(), as_call)
    listed = "sklearn.preprocessing._data.StandardScaler (as ConstructorFromReduceNode)"
    assert untrusted_types(data) == [listed]
    assert untrusted_types(data, trusted=[listed]) == []


def test_knn_search_tree_is_rebuilt_from_the_training_codes(store: Path, tmp_path: Path) -> None:
    """A saved KDTree from other data would change every prediction; it is never used."""
    from sklearn.neighbors import KDTree

    result = fit_pipeline(store, clf="knn", pca=4, out=tmp_path / "knn", progress=False)
    knn = result.pipeline.steps[-1][1]
    assert knn._fit_method == "kd_tree"
    clean = predict(result.run_dir, store, progress=False)["predicted"]
    with CodeStore(store) as opened:
        X = opened.codes()
    before = result.pipeline.predict(X)
    knn._tree = KDTree(np.random.default_rng(1).normal(size=knn._fit_X.shape))  # poison
    data = skops.io.dumps(result.pipeline)
    (result.run_dir / "model.skops").write_bytes(data)
    assert (predict(result.run_dir, store, progress=False)["predicted"] == clean).all()
    poisoned = skops.io.loads(data, trusted=skops.io.get_untrusted_types(data=data))
    assert (poisoned.predict(X) != before).any()  # positive control: the tree mattered
    knn._y = knn._y + 5  # labels outside the classes
    (result.run_dir / "model.skops").write_bytes(skops.io.dumps(result.pipeline))
    with pytest.raises(CnnCodesError, match=r"k-NN step 'classifier' whose training codes"):
        load_model(result.run_dir)


# --- (a) a callable from a module that re-exports subprocess --------------------------------


def test_constructor_call_through_sklearn_testing_runs_nothing(good_run, store, tmp_path,
                                                               marker, runner) -> None:
    """FunctionTransformer(func=sklearn.utils._testing.check_output(["touch", marker])).

    The name starts with "sklearn.", which the old prefix rule trusted; skops calls the
    "constructor" with the arguments while loading.
    """
    from sklearn.utils._testing import check_output

    pipeline = Pipeline([("run", FunctionTransformer(func=check_output)),
                         ("classifier", _fitted_tail())])

    def call_at_load(schema: dict[str, Any]) -> None:
        node = _find(schema, _node_of(check_output))
        # Named through sklearn's re-export, as an attacker would name it.
        node.update({"__module__": "sklearn.utils._testing",
                     "__loader__": "ConstructorFromReduceNode", "content": {
            "__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode",
            "content": [{"__class__": "list", "__module__": "builtins", "__loader__": "ListNode",
                         "content": [_json_node("touch"), _json_node(str(marker))]}]}})

    data = _edit_schema(skops.io.dumps(pipeline), call_at_load)
    names = skops.io.get_untrusted_types(data=data)
    assert names == ["sklearn.utils._testing.check_output"]  # all "sklearn."-prefixed
    run = _hostile_run(good_run, tmp_path, data)
    _assert_refused_everywhere(run, store, marker, names, runner)

    skops.io.loads(data, trusted=names)  # positive control: skops alone runs it
    assert marker.exists()


def test_os_system_in_a_function_transformer_runs_nothing(good_run, store, tmp_path, marker,
                                                          runner) -> None:
    pipeline = Pipeline([("run", FunctionTransformer(func=os.system)),
                         ("classifier", _fitted_tail())])
    run = _hostile_run(good_run, tmp_path, skops.io.dumps(pipeline))
    _assert_refused_everywhere(run, store, marker, [
        f"{os.system.__module__}.system",
        "sklearn.preprocessing._function_transformer.FunctionTransformer"], runner)


# --- (b) a bound method of an allowed object -------------------------------------------------


def _shell_through_str_format(marker: Path) -> bytes:
    """predict(X) -> "touch MARKER".format(X) -> os.system("touch MARKER").

    The command comes from a bound method of a str, a type every run holds.
    """
    steps = [("command", FunctionTransformer(func=np.log)),
             ("run", FunctionTransformer(func=os.system)),
             ("classifier", _fitted_tail())]
    X = np.ones((2, DIM))
    for _, step in steps[:2]:
        step.fit(X)

    def bound_method(schema: dict[str, Any]) -> None:
        node = _find(schema, _node_of(np.log))
        node.clear()
        node.update({"__class__": "str", "__module__": "builtins", "__loader__": "MethodNode",
                     "content": {"func": "format", "obj": _json_node(f"touch {marker}")}})

    return _edit_schema(skops.io.dumps(Pipeline(steps)), bound_method)


def test_bound_method_of_an_allowed_object_runs_nothing(good_run, store, tmp_path, marker,
                                                        runner) -> None:
    data = _shell_through_str_format(marker)
    run = _hostile_run(good_run, tmp_path, data)
    _assert_refused_everywhere(run, store, marker, ["builtins.str.format"], runner)
    # Trusting the other names is not enough: the method is refused on its own.
    others = [name for name in untrusted_types(data) if name != "builtins.str.format"]
    assert "posix.system" in others or "nt.system" in others
    with pytest.raises(CnnCodesError, match=r"by default: builtins\.str\.format; only if"):
        load_model(run, trusted=others)
    assert not marker.exists()

    loaded = skops.io.loads(data, trusted=skops.io.get_untrusted_types(data=data))
    with pytest.raises(Exception):  # noqa: B017 - the tail fails after the command ran
        loaded.predict(np.ones((1, DIM)))
    assert marker.exists()  # positive control: the payload is live


def test_bound_method_of_an_estimator_is_refused(good_run, store, tmp_path, marker,
                                                 runner) -> None:
    scaler = StandardScaler().fit(np.ones((2, DIM)))
    pipeline = Pipeline([("scale", FunctionTransformer(func=scaler.transform)),
                         ("classifier", _fitted_tail())])
    run = _hostile_run(good_run, tmp_path, skops.io.dumps(pipeline))
    _assert_refused_everywhere(
        run, store, marker, ["sklearn.preprocessing._data.StandardScaler.transform"], runner)


# --- (c) metadata naming the user's pipeline file --------------------------------------------


def test_user_pipeline_file_in_metadata_is_never_imported(good_run, store, tmp_path, marker,
                                                          runner, monkeypatch) -> None:
    module = "cnncodes_user_pipeline_evil"  # the name fit gives a --clf evil.py module
    evil = tmp_path / "code" / f"{module}.py"
    evil.parent.mkdir()
    evil.write_text(f"open({str(marker)!r}, 'w').close()\n"
                    "from sklearn.preprocessing import StandardScaler\n"
                    "class Evil(StandardScaler):\n    pass\n")
    monkeypatch.syspath_prepend(str(evil.parent))  # as if it sat in the working folder
    monkeypatch.delitem(sys.modules, module, raising=False)
    metadata = json.loads((good_run / "metadata.json").read_text())
    metadata.update(pipeline="evil", pipeline_source=str(evil))

    pipeline = Pipeline([("scaler", StandardScaler().fit(np.ones((2, DIM)))),
                         ("classifier", _fitted_tail())])

    def user_class(schema: dict[str, Any]) -> None:
        node = _find(schema, lambda n: n.get("__class__") == "StandardScaler")
        node.update({"__module__": module, "__class__": "Evil"})

    data = _edit_schema(skops.io.dumps(pipeline), user_class)
    run = _hostile_run(good_run, tmp_path, data, metadata)
    message = _assert_refused_everywhere(run, store, marker, [f"{module}.Evil"], runner)
    assert f"fitted with your pipeline file {str(evil)!r}" in message

    # The same metadata with only allowed types loads, and still imports nothing.
    clean = _hostile_run(good_run, tmp_path / "clean", skops.io.dumps(pipeline), metadata)
    assert load_model(clean).metadata["pipeline_source"] == str(evil)
    assert not marker.exists()

    load_model(run, trusted=[f"{module}.Evil"])  # the explicit opt-in: now it is imported
    assert marker.exists()


# --- run folders: versions and metadata that does not match the model ------------------------


@pytest.mark.parametrize("version, says", [
    (None, r"was written by an older cnncodes \(metadata.json has no format_version; this "
           r"one reads version 2\); re-fit it with this cnncodes \(cnncodes fit .*codes.h5 "
           r"--clf logreg --layer -2\)"),
    (1, r"has format_version 1, from an older cnncodes \(this one reads 2\); re-fit it"),
    (7, r"has format_version 7, from a newer cnncodes \(this one reads 2\); re-fit it"),
])
def test_run_format_version(good_run, tmp_path, version, says, runner) -> None:
    metadata = json.loads((good_run / "metadata.json").read_text())
    metadata.pop("format_version")
    if version is not None:
        metadata["format_version"] = version
    run = _hostile_run(good_run, tmp_path, (good_run / "model.skops").read_bytes(), metadata)
    with pytest.raises(CnnCodesError, match=says):
        load_model(run)
    result = runner.invoke(main, ["predict", str(run), str(tmp_path)])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0


def test_metadata_that_does_not_match_the_model(good_run, tmp_path) -> None:
    metadata = json.loads((good_run / "metadata.json").read_text())
    fewer = _hostile_run(good_run, tmp_path / "fewer", (good_run / "model.skops").read_bytes(),
                         {**metadata, "classes": ["a", "b"]})
    with pytest.raises(CnnCodesError, match=r"predicts classes .* not indices of the 2 classes"):
        load_model(fewer)
    wider = _hostile_run(good_run, tmp_path / "wider", (good_run / "model.skops").read_bytes(),
                         {**metadata, "code_dim": 99})
    with pytest.raises(CnnCodesError, match=r"expects 12-d codes but metadata.json says 99"):
        load_model(wider)
    broken = _hostile_run(good_run, tmp_path / "broken", b"not a zip", metadata)
    with pytest.raises(CnnCodesError, match=r"has an unreadable model.skops"):
        load_model(broken)


# --- PyTorch weights: torch.load(weights_only=True) refuses pickled code ---------------------


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def evil_pth(tmp_path: Path, marker: Path) -> Path:
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "trap": _Payload(marker)}, path)
    return path


def test_hostile_weights_file_runs_nothing(evil_pth: Path, marker: Path, tmp_path: Path,
                                           runner) -> None:
    with pytest.raises(CnnCodesError, match=r"could not be read as a PyTorch state dict"):
        load_backbone("resnet18", str(evil_pth))
    folder = write_image_folder(tmp_path / "images", per_class=1, size=32)
    result = runner.invoke(main, ["extract", str(folder), "--model", "resnet18", "--weights",
                                  str(evil_pth), "--out", str(tmp_path / "s.h5"), "--quiet"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert result.output.startswith("Error: ") and result.output.strip().count("\n") == 0
    assert "could not be read as a PyTorch state dict" in result.output
    assert not marker.exists()

    torch.load(evil_pth, weights_only=False)  # positive control: plain pickle runs it
    assert marker.exists()


def test_hostile_fine_tuned_checkpoint_runs_nothing(evil_pth: Path, marker: Path,
                                                    tmp_path: Path) -> None:
    from cnncodes.finetuning.finetune import load_run

    run = tmp_path / "finetuned"
    run.mkdir()
    shutil.copy(evil_pth, run / "model.pt")
    (run / "finetune.json").write_text(json.dumps({
        "model": "resnet18", "classes": ["a", "b"], "transform": {},
        "head": {"path": "fc", "hidden": [], "replace_fc": 1, "dropout": 0.0}}))
    with pytest.raises(CnnCodesError, match=r"model.pt"):
        load_run(run)
    assert not marker.exists()
