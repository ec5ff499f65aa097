"""Sharded extraction under torchrun: disjoint deterministic shards, one store equal to a
single process's, a failed or killed rank that loses nothing, and a resumed job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from cnncodes import CodeStore, extract
from cnncodes.extraction.shards import Shard, missing_ranges, owned_parts, shard_from_env

PER_CLASS = 5  # per split and class: 20 real photos, and a damaged one
RUN_SPECIFIC = {"device", "created", "execution", "attributes_sha256"}


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shards_are_disjoint_aligned_and_cover_everything(world: int) -> None:
    total, part = 23, 4
    shards = [owned_parts(total, part, Shard(rank, world, rank, world)) for rank in range(world)]
    ranges = sorted(r for shard in shards for r in shard)
    assert ranges == [(s, min(total, s + part)) for s in range(0, total, part)]  # one per part
    assert all(start % part == 0 for shard in shards for start, _ in shard)
    assert shards == [owned_parts(total, part, Shard(r, world, r, world)) for r in range(world)]


def test_missing_ranges_fill_holes_of_any_earlier_part_size() -> None:
    wanted = [(0, 4), (8, 12), (12, 16)]
    assert missing_ranges(wanted, []) == wanted
    assert missing_ranges(wanted, [(0, 4), (12, 16)]) == [(8, 12)]
    assert missing_ranges(wanted, [(0, 3), (9, 11)]) == [(3, 4), (8, 9), (11, 12), (12, 16)]


def test_shard_from_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert shard_from_env() == Shard() and not Shard().distributed
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert shard_from_env() == Shard(3, 4, 1, 2)


@pytest.fixture(scope="module")
def photos(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's folder: train/val of two classes, real photos, one truncated JPEG."""
    root = tmp_path_factory.mktemp("photos")
    for split in ("train", "val"):
        for label in ("ants", "bees"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for photo in sorted((hymenoptera / split / label).glob("*.jpg"))[:PER_CLASS]:
                (folder / photo.name).write_bytes(photo.read_bytes())
    first = next((root / "train" / "bees").glob("*.jpg"))
    (root / "train" / "bees" / "zz_truncated.jpg").write_bytes(first.read_bytes()[:600])
    return root


def _torchrun(data: Path, out: str, cwd: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "cnncodes", "extract", str(data), "--out", out,
               "--part-size", "3", "-q", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def single_store(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "single.h5"
    extract(source=str(photos), part_size=3, out=str(out), progress=False)
    return out


def _assert_same_store(store_path: Path, reference: Path) -> None:
    with CodeStore(store_path) as got, CodeStore(reference) as want:
        assert got.paths == want.paths and got.classes == want.classes
        assert np.array_equal(got.labels, want.labels)
        assert list(got.split) == list(want.split)
        assert got.skipped == want.skipped and got.skipped
        np.testing.assert_allclose(got.codes("-2"), want.codes("-2"), atol=1e-5, rtol=0)
    with h5py.File(store_path) as got, h5py.File(reference) as want:
        mine = {k: v for k, v in got.attrs.items() if k not in RUN_SPECIFIC}
        theirs = {k: v for k, v in want.attrs.items() if k not in RUN_SPECIFIC}
        assert mine.keys() == theirs.keys()
        assert all(np.array_equal(mine[k], theirs[k]) for k in mine), "attributes differ"
        assert json.loads(got.attrs["execution"])["ranks"] == 2


@pytest.mark.slow
def test_two_ranks_write_the_single_process_store(photos: Path, single_store: Path,
                                                  tmp_path: Path) -> None:
    job = _torchrun(photos, "two.h5", tmp_path)
    stdout, stderr = job.communicate(timeout=600)
    assert job.returncode == 0, stderr
    assert stdout.splitlines() == ["two.h5"], "only rank 0 prints the store's path"
    _assert_same_store(tmp_path / "two.h5", single_store)
    assert not (tmp_path / "two.h5.parts").exists()


@pytest.mark.slow
def test_a_failed_rank_is_named_and_the_rerun_resumes(photos: Path, single_store: Path,
                                                      tmp_path: Path) -> None:
    # Rank 1 owns the second part (positions 3-5): a folder where its temporary file goes
    # makes that rank, and only it, fail to write.
    blocker = tmp_path / "s.h5.parts" / "part-000000003-000000006.h5.tmp"
    blocker.mkdir(parents=True)
    job = _torchrun(photos, "s.h5", tmp_path)
    _, stderr = job.communicate(timeout=600)
    assert job.returncode != 0
    ours = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(ours) == 1, stderr
    assert ours[0].startswith("Error: rank 1 of 2 failed while encoding its images: ")
    assert "run the same command again to resume" in ours[0]
    assert not (tmp_path / "s.h5").exists()
    assert len(list((tmp_path / "s.h5.parts").glob("part-*.h5"))) >= 1  # rank 0's work kept
    blocker.rmdir()
    again = _torchrun(photos, "s.h5", tmp_path)
    _, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr
    _assert_same_store(tmp_path / "s.h5", single_store)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_killed_rank_loses_nothing_and_the_job_resumes(photos: Path, single_store: Path,
                                                         tmp_path: Path) -> None:
    parts = tmp_path / "k.h5.parts"
    job = _torchrun(photos, "k.h5", tmp_path, "--batch-size", "1")
    deadline = time.time() + 300
    while not list(parts.glob("part-*.h5")) and time.time() < deadline:
        assert job.poll() is None, job.communicate()[1]
        time.sleep(0.05)
    ranks = _children(job.pid)
    assert len(ranks) == 2, "torchrun should run two ranks"
    os.kill(ranks[1], signal.SIGKILL)
    job.communicate(timeout=300)
    assert job.returncode != 0
    assert not (tmp_path / "k.h5").exists()
    done = len(list(parts.glob("part-*.h5")))
    assert 1 <= done < 7, "the kill should land mid-run"
    # The rerun may use another world size: here one process finishes the job.
    result = extract(source=str(photos), part_size=3, out=str(tmp_path / "k.h5"), progress=False)
    assert result.resumed_from >= 3
    with CodeStore(tmp_path / "k.h5") as got, CodeStore(single_store) as want:
        assert got.paths == want.paths and got.skipped == want.skipped
        assert np.array_equal(got.labels, want.labels)
        np.testing.assert_allclose(got.codes("-2"), want.codes("-2"), atol=1e-5, rtol=0)
