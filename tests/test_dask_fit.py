"""fit --stream --scheduler: the streamed probe on a local Dask cluster of 2 worker processes."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cnncodes import load_model
from cnncodes.cli import main

distributed = pytest.importorskip("distributed")

# Small enough to be quick, large enough for several chunks, CV folds and epochs.
SETTINGS = ["--clf", "logreg", "--cv", "2", "--chunk-rows", "64", "--epochs", "2"]


@pytest.fixture(scope="module")
def scheduler() -> str:
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def _fit(runner, store: Path, out: str, *extra: str, env: dict[str, str] | None = None):
    return runner.invoke(
        main,
        ["fit", str(store), "--stream", *SETTINGS, "--out", out, "--format", "json", "-q", *extra],
        env=env,
    )


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and result.output.strip().count("\n") == 0
    return result.output


def test_dask_fit_trains_the_local_streamed_models(
    digits_store: Path, scheduler: str, runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not the repository: the store path is absolute elsewhere
    on_dask = _fit(runner, digits_store, "dask", "--scheduler", scheduler)
    assert on_dask.exit_code == 0, on_dask.output
    local = _fit(runner, digits_store, "local")
    assert local.exit_code == 0, local.output
    rows = [json.loads(result.stdout)[0] for result in (on_dask, local)]
    for row in rows:
        del row["run"], row["fit_seconds"]
    assert rows[0] == rows[1]
    assert rows[0]["pipeline"] == "logreg (streamed)" and rows[0]["n_train"] == 300
    # The same rows in the same order reach every model: the same models, not close ones
    # (measured bitwise equal; the tolerance only spares a BLAS that rounds differently).
    models = [load_model(tmp_path / name).pipeline for name in ("dask", "local")]
    for step, attributes in (("scaler", ("mean_", "scale_")), ("classifier", ("coef_", "intercept_"))):
        for attribute in attributes:
            np.testing.assert_allclose(
                getattr(models[0].named_steps[step], attribute),
                getattr(models[1].named_steps[step], attribute),
                rtol=1e-9,
                atol=1e-12,
            )
    frames = [pd.read_csv(tmp_path / name / "predictions.csv") for name in ("dask", "local")]
    pd.testing.assert_frame_equal(frames[0], frames[1])
    metadata = [json.loads((tmp_path / name / "metadata.json").read_text()) for name in ("dask", "local")]
    assert metadata[0]["search"]["candidates"] == metadata[1]["search"]["candidates"]
    assert metadata[0]["stream"]["dask_scheduler"] == scheduler
    assert metadata[1]["stream"]["dask_scheduler"] is None


def test_a_store_the_workers_cannot_open_is_one_line(
    digits_store: Path, scheduler: str, runner, tmp_path: Path
) -> None:
    """A path that only this process can follow: /proc/self/fd/N names the store through
    a file descriptor open here; in a worker process the same path leads nowhere."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd (Linux)")
    import resource

    # A high number, which no worker process has open.
    high = min(900, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1)
    opened = os.open(digits_store, os.O_RDONLY)
    descriptor = os.dup2(opened, high)
    try:
        path = f"/proc/self/fd/{descriptor}"
        # The scheduler from Dask's own environment variable, as a Dask user would set it.
        result = _fit(
            runner, Path(path), str(tmp_path / "run"), env={"DASK_SCHEDULER_ADDRESS": scheduler}
        )
    finally:
        os.close(descriptor)
        os.close(opened)
    message = _one_line_error(result)
    assert re.search(
        rf"Dask worker tcp://\S+ cannot open the code store '{path}': there is no such file "
        r"there\. The store must be on a filesystem that this machine and every worker share",
        message,
    )
    assert not (tmp_path / "run").exists()


def test_scheduler_without_stream_is_a_usage_error(digits_store: Path, runner, tmp_path) -> None:
    result = runner.invoke(
        main, ["fit", str(digits_store), "--scheduler", "tcp://127.0.0.1:8786", "-o", str(tmp_path)]
    )
    message = _one_line_error(result)
    assert "--scheduler 'tcp://127.0.0.1:8786' runs the streamed fit on Dask; add --stream" in message


def test_without_the_extra_the_error_names_it(
    digits_store: Path, runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    result = _fit(runner, digits_store, str(tmp_path / "run"), "--scheduler", "tcp://127.0.0.1:8786")
    message = _one_line_error(result)
    assert "fits on Dask, which is not installed; run pip install 'cnncodes[dask]'" in message


def test_a_scheduler_that_does_not_answer_is_one_line(
    digits_store: Path, runner, tmp_path: Path
) -> None:
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        result = _fit(runner, digits_store, str(tmp_path / "run"), "--scheduler", "tcp://127.0.0.1:9")
    message = _one_line_error(result)
    assert "Cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'" in message
    assert "start one with 'dask scheduler'" in message
