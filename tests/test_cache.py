"""Every default output under one root, and `cnncodes cache list|prune` on a real cache."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from cnncodes.cli import main
from tests.conftest import write_digits_folder


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "moved-cache"
    monkeypatch.setenv("CNNCODES_CACHE", str(root))
    monkeypatch.chdir(tmp_path)
    return root


def test_one_variable_moves_every_default_output_and_prune_keeps_good(cache: Path,
                                                                      tmp_path: Path) -> None:
    runner = CliRunner()
    data = write_digits_folder(tmp_path / "d", per_class=3, classes=(0, 1), splits=("",))
    store = Path(runner.invoke(main, ["extract", str(data), "-q"]).stdout.strip())
    assert store.parent == cache / "stores" and store.is_file()
    fit = runner.invoke(main, ["fit", str(store), "--cv", "2", "-q", "--format", "json"])
    assert fit.exit_code == 0, fit.stderr
    (run,) = (cache / "runs").iterdir()
    # An interrupted extraction and a store this cnncodes refuses.
    (cache / "stores" / "half.h5.parts").mkdir()
    (cache / "stores" / "half.h5.parts" / "part-000000000-000000003.h5").write_bytes(b"x" * 10)
    (cache / "stores" / "old.h5").write_bytes(b"not a store")
    listed = pd.read_csv(io.StringIO(runner.invoke(main, ["cache", "list", "--format", "csv"]).stdout))
    status = dict(zip(listed["name"], listed["status"]))
    assert status == {store.name: "ok", store.name + ".lock": "ok", "half.h5.parts": "incomplete",
                      "old.h5": "stale", run.name: "ok"}
    dry = runner.invoke(main, ["cache", "prune", "--dry-run", "--format", "json"])
    assert {e["name"] for e in json.loads(dry.stdout)} == {"half.h5.parts", "old.h5"}
    assert (cache / "stores" / "old.h5").exists()
    pruned = runner.invoke(main, ["cache", "prune", "--format", "json"])
    assert {e["name"] for e in json.loads(pruned.stdout)} == {"half.h5.parts", "old.h5"}
    assert store.is_file() and run.is_dir()
    assert not (cache / "stores" / "half.h5.parts").exists()


def test_prune_never_touches_an_entry_in_use(cache: Path) -> None:
    from filelock import FileLock

    from cnncodes.cache import prune_cache

    stores = cache / "stores"
    (stores / "busy.h5.parts").mkdir(parents=True)
    with FileLock(str(stores / "busy.h5") + ".lock"):
        assert prune_cache(everything=True) == []
    assert (stores / "busy.h5.parts").is_dir()
    assert [e.name for e in prune_cache()] == ["busy.h5.parts"]
