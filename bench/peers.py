"""cnncodes against its peers: img2vec-pytorch, thingsvision and a plain ImageFolder script.

Same folder of real JPEGs, same resnet18 weights, same machine and thread settings; each
contender is one whole process (interpreter start, imports, model load, listing, decoding,
forward passes, writing the codes to a file), timed from start to exit:

- cnncodes: its CLI, ``cnncodes extract FOLDER --model resnet18 --weights DEFAULT
  --layer -2 --out X.h5 -q``;
- img2vec-pytorch: ``Img2Vec(model='resnet18', cuda=False).get_vec`` on batches of PIL
  images (``Image.open(path).convert('RGB')``), the way its README uses it;
- thingsvision: ``get_extractor(model_name='resnet18', source='torchvision',
  pretrained=True)`` with its own ``ImageDataset`` + ``DataLoader``, module ``avgpool``;
- plain: torchvision ``ImageFolder`` + torch ``DataLoader`` with
  ``ResNet18_Weights.DEFAULT.transforms()``, ``model.fc = Identity()``, ``inference_mode``.

The weights: ImageNet weights cannot be downloaded here, so a random-init resnet18 state
dict (seed 0) is saved in a temporary TORCH_HOME under the file name of the DEFAULT
weights' URL; torchvision (hence every contender) loads it from there without a network.

The images: ``--images`` hard links (copies across file systems) of the hymenoptera JPEGs
under distinct names in a temporary ImageFolder tree (class folders ``ants``/``bees``),
plus the dataset's one GIF placeholder, which every contender leaves out by extension.
All files are read once before timing, so the page cache is warm and equal for all.

Each contender runs ``--repeats`` times, interleaved (the order rotates each round), and the
best time counts. Codes are compared with cnncodes' row by row (matched by file path)
where the preprocessing is the same (plain, thingsvision: the weights' own transforms);
img2vec resizes to 224x224 without a crop, so its codes are not comparable.

The peers live in their own virtual environment (``--python-peers``); this script runs in
cnncodes' (it reads the HDF5 store with h5py). Prints a markdown table and writes it to
bench/results/peers.md. Run: .venv/bin/python bench/peers.py [--images 2000]

The peers' venv (same torch as cnncodes' venv; thingsvision 2.7.3 pins torchvision==0.15.2,
numpy<2 and tensorflow<2.16, so a plain install would bring torch 2.0.1 and tensorflow with
CUDA: it is installed without its dependencies, plus what its torchvision path imports)::

    python3 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/peers-venv/bin/pip install img2vec_pytorch==1.0.2
    /work/peers-venv/bin/pip install --no-deps thingsvision==2.7.3
    /work/peers-venv/bin/pip install torchtyping==0.1.5 typeguard==2.13.3 \\
        tensorflow-cpu==2.15.1 timm "safetensors<0.6" "huggingface_hub<1"

(tensorflow-cpu brings numpy 1.26.4; thingsvision imports tensorflow at module level even
for torchvision models, so it cannot be left out.)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hymenoptera_data"
RESULTS = ROOT / "bench" / "results" / "peers.md"
PEERS_PYTHON = "/work/peers-venv/bin/python"
# The issue's floors: cnncodes' throughput over the peer's, whole process.
FLOORS = {"img2vec-pytorch": 1.6, "plain ImageFolder + DataLoader": 1.25}
AGREEMENT = 1e-4  # max abs difference of codes where preprocessing matches
JPEG = (".jpg", ".jpeg")

# --- the peers' scripts: written to the temporary folder, run by --python-peers ---------

# Lists the tree as torchvision's ImageFolder does (sorted classes, sorted files, its
# extensions); every script saves codes + paths relative to the folder in one .npz.
PLAIN = """
import os, sys
import numpy as np, torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.models import ResNet18_Weights, resnet18

data, out, batch, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
weights = ResNet18_Weights.DEFAULT
model = resnet18(weights=weights)
model.fc = torch.nn.Identity()
model.eval()
dataset = ImageFolder(data, transform=weights.transforms())
loader = DataLoader(dataset, batch_size=batch, num_workers=workers)
chunks = []
with torch.inference_mode():
    for images, _ in loader:
        chunks.append(model(images).numpy())
paths = [os.path.relpath(path, data) for path, _ in dataset.samples]
np.savez(out, codes=np.concatenate(chunks), paths=np.array(paths))
"""

IMG2VEC = """
import os, sys
import numpy as np
from PIL import Image
from img2vec_pytorch import Img2Vec
from torchvision.datasets.folder import IMG_EXTENSIONS

data, out, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
img2vec = Img2Vec(cuda=False, model="resnet18")
paths = [
    os.path.join(name, file)
    for name in sorted(e.name for e in os.scandir(data) if e.is_dir())
    for file in sorted(os.listdir(os.path.join(data, name)))
    if file.lower().endswith(IMG_EXTENSIONS)
]
chunks = []
for start in range(0, len(paths), batch):
    images = [Image.open(os.path.join(data, p)).convert("RGB") for p in paths[start:start + batch]]
    chunks.append(img2vec.get_vec(images))
np.savez(out, codes=np.concatenate(chunks), paths=np.array(paths))
"""

THINGSVISION = """
import os, sys, tempfile
import numpy as np
from thingsvision import get_extractor
from thingsvision.utils.data import DataLoader, ImageDataset

data, out, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
extractor = get_extractor(model_name="resnet18", source="torchvision", device="cpu",
                          pretrained=True)
with tempfile.TemporaryDirectory() as order:
    dataset = ImageDataset(root=data, out_path=order, backend=extractor.get_backend(),
                           transforms=extractor.get_transformations())
    batches = DataLoader(dataset=dataset, batch_size=batch, backend=extractor.get_backend())
    codes = extractor.extract_features(batches=batches, module_name="avgpool",
                                       flatten_acts=True, output_type="ndarray")
paths = [os.path.relpath(path, data) for path in dataset.images]
np.savez(out, codes=codes, paths=np.array(paths))
"""

VERSIONS = """
import json, sys
from importlib.metadata import PackageNotFoundError, version
found = {}
for name in sys.argv[1:]:
    try:
        found[name] = version(name)
    except PackageNotFoundError:
        found[name] = None
print(json.dumps(found))
"""


@dataclass
class Contender:
    name: str
    command: Callable[[Path, Path], list[str]]  # (folder, output) -> argv
    output_suffix: str
    package: str  # distribution whose version is reported
    python: str  # interpreter whose packages it uses
    comparable: bool  # same preprocessing as cnncodes (weights' transforms)
    note: str = ""
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)  # 1-minute load average before each run
    failures: list[str] = field(default_factory=list)
    version: str = "?"
    codes: np.ndarray | None = None
    paths: list[str] | None = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="JPEGs in the bench folder")
    parser.add_argument("--python-peers", default=PEERS_PYTHON,
                        help="interpreter of the venv with img2vec_pytorch and thingsvision")
    parser.add_argument("--cnncodes", default=None,
                        help="cnncodes executable (default: the one beside this interpreter)")
    parser.add_argument("--data", default=str(DATA), help="hymenoptera_data folder")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, best counts")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--plain-workers", type=int, default=0,
                        help="DataLoader num_workers of the plain script")
    parser.add_argument("--only", default="",
                        help="comma-separated subset: cnncodes,img2vec,thingsvision,plain")
    parser.add_argument("--no-gif", action="store_true",
                        help="leave the GIF placeholder out of the bench folder")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--out", default=str(RESULTS), help="markdown file to write")
    args = parser.parse_args()
    if args.repeats < 1 or args.images < 1:
        parser.error("--repeats and --images must be at least 1")
    # A SIGTERM (or a closed terminal) ends through SystemExit, so the temporary folder
    # of links, weights and outputs is removed as on a normal exit.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _end_on_signal)

    cnncodes = args.cnncodes or shutil.which("cnncodes", path=str(Path(sys.executable).parent))
    cnncodes = cnncodes or shutil.which("cnncodes")
    if not cnncodes:
        sys.exit("cnncodes executable not found; pass --cnncodes PATH")
    if not Path(args.python_peers).exists():
        sys.exit(f"{args.python_peers} not found; pass --python-peers (see the docstring)")

    with tempfile.TemporaryDirectory(prefix="cnncodes-peers-") as tmp:
        work = Path(tmp)
        folder = work / "bench"
        sources = build_folder(Path(args.data), folder, args.images, gif=not args.no_gif)
        env = make_env(work)
        scripts = work / "scripts"
        scripts.mkdir()
        for name, text in (("plain", PLAIN), ("img2vec", IMG2VEC),
                           ("thingsvision", THINGSVISION), ("versions", VERSIONS)):
            (scripts / f"run_{name}.py").write_text(textwrap.dedent(text).lstrip())
        batch = str(args.batch_size)
        peers = args.python_peers
        contenders = [
            Contender(
                "cnncodes",
                lambda d, o: [cnncodes, "extract", str(d), "--model", "resnet18",
                              "--weights", "DEFAULT", "--layer", "-2", "--out", str(o),
                              "--batch-size", batch, "-q"],
                ".h5", "cnncodes", cnncodes_python(cnncodes), True,
                "CLI, default workers",
            ),
            Contender(
                "img2vec-pytorch",
                lambda d, o: [peers, str(scripts / "run_img2vec.py"), str(d), str(o), batch],
                ".npz", "img2vec_pytorch", peers, False,
                "Resize((224, 224)) of the whole image, no crop: codes not comparable",
            ),
            Contender(
                "thingsvision",
                lambda d, o: [peers, str(scripts / "run_thingsvision.py"), str(d), str(o), batch],
                ".npz", "thingsvision", peers, True,
                "its ImageDataset + DataLoader (one process), weights' transforms",
            ),
            Contender(
                "plain ImageFolder + DataLoader",
                lambda d, o: [peers, str(scripts / "run_plain.py"), str(d), str(o), batch,
                              str(args.plain_workers)],
                ".npz", "torchvision", peers, True,
                f"num_workers={args.plain_workers}, weights' transforms",
            ),
        ]
        if args.only:
            keys = {k.strip() for k in args.only.split(",")}
            contenders = [c for c in contenders
                          if c.name.split()[0].split("-")[0] in keys]
        for contender in contenders:
            contender.version = package_versions(
                contender.python, [contender.package, "torch"], scripts / "run_versions.py", env)

        warm_page_cache(folder)
        outputs = work / "outputs"
        outputs.mkdir()
        for round_ in range(args.repeats):
            shift = round_ % len(contenders)
            for contender in contenders[shift:] + contenders[:shift]:
                out = outputs / f"{contender.name.split()[0]}-{round_}{contender.output_suffix}"
                load = os.getloadavg()[0]
                seconds, cpu, error = run_timed(contender.command(folder, out), env, work,
                                                args.timeout)
                status = (f"{seconds:.1f} s, CPU {cpu:.1f} s, load before {load:.1f}"
                          if error is None else f"FAILED: {error}")
                with contextlib.suppress(OSError):  # a full disk or closed stderr: go on
                    print(f"[round {round_ + 1}] {contender.name}: {status}", file=sys.stderr)
                if error is not None:
                    contender.failures.append(error)
                else:
                    contender.seconds.append(seconds)
                    contender.cpu.append(cpu)
                    contender.load.append(load)
                    if contender.codes is None:
                        contender.codes, contender.paths = read_codes(out)
                out.unlink(missing_ok=True)
                # Written after every run, so that a bench cut short keeps what it measured.
                text = report(contenders, args, folder, sources, rounds=round_ + 1)
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(text + "\n")
    print(text)


def _end_on_signal(number: int, frame: object) -> None:
    print(f"bench/peers.py: ended by signal {number}; the results file holds the runs "
          "finished so far", file=sys.stderr)
    sys.exit(128 + number)


# --- setting up ----------------------------------------------------------------------------


def build_folder(data: Path, folder: Path, n: int, *, gif: bool) -> dict[str, Path]:
    """``n`` JPEGs as ``folder/<class>/cNN_<split>_<name>``, cycling through the dataset.

    Returns each bench file's relative path -> the original file.
    """
    originals = sorted(p for p in data.glob("*/*/*") if p.suffix.lower() in JPEG)
    if not originals:
        sys.exit(f"no JPEGs under {data}/<split>/<class>/")
    sources: dict[str, Path] = {}
    for i in range(n):
        original = originals[i % len(originals)]
        split, label = original.parts[-3], original.parts[-2]
        relative = f"{label}/c{i // len(originals):02d}_{split}_{original.name}"
        sources[relative] = original
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(original, target)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(original, target)
    if gif:
        for placeholder in sorted(data.glob("*/*/*.gif"))[:1]:
            shutil.copyfile(placeholder, folder / placeholder.parts[-2] / placeholder.name)
    return sources


def make_env(work: Path) -> dict[str, str]:
    """Same environment for every contender: the random resnet18 weights in TORCH_HOME."""
    import torch
    import torchvision

    torch_home = work / "torch_home"
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), checkpoints / url.rsplit("/", 1)[-1])
    env = dict(os.environ)
    env["TORCH_HOME"] = str(torch_home)
    env["CNNCODES_CACHE"] = str(work / "cnncodes_cache")  # nothing written outside the temp dir
    env.pop("PYTHONPATH", None)
    return env


def cnncodes_python(executable: str) -> str:
    """The interpreter in the console script's shebang (for its torch version)."""
    try:
        with open(executable, "rb") as f:
            first = f.readline().decode(errors="replace")
    except OSError:
        return sys.executable
    return first[2:].strip().split()[0] if first.startswith("#!") else sys.executable


def package_versions(python: str, names: list[str], script: Path, env: dict[str, str]) -> str:
    try:
        run = subprocess.run([python, str(script), *names], env=env, capture_output=True,
                             text=True, timeout=120, check=True)
        found = json.loads(run.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return "?"
    main_version = found.get(names[0]) or "?"
    return f"{main_version} (torch {found.get('torch') or '?'})"


def warm_page_cache(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            path.read_bytes()


def run_timed(argv: list[str], env: dict[str, str], cwd: Path,
              timeout: float) -> tuple[float, float, str | None]:
    """(wall seconds, CPU seconds of the process and its children, None or why it failed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    try:
        run = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                             capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - started, 0.0, f"timed out after {timeout:.0f} s"
    except OSError as error:
        return time.perf_counter() - started, 0.0, str(error)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if run.returncode != 0:
        tail = run.stderr.decode(errors="replace").strip().splitlines()[-3:]
        return seconds, cpu, f"exit {run.returncode}: {' | '.join(tail)}"
    return seconds, cpu, None


def read_codes(path: Path) -> tuple[np.ndarray, list[str]]:
    if path.suffix == ".h5":
        with h5py.File(path, "r") as store:
            (node,) = list(store["codes"])  # one layer asked for
            codes = store["codes"][node][:]
            paths = list(store["paths"].asstr()[:])
        return codes.astype(np.float32), paths
    with np.load(path) as saved:
        return saved["codes"].astype(np.float32), [str(p) for p in saved["paths"]]


# --- the report -----------------------------------------------------------------------------


def agreement(reference: Contender, other: Contender,
              sources: dict[str, Path]) -> tuple[str, str, list[str]]:
    """(max abs diff, min cosine, notes) of ``other``'s codes against ``reference``'s."""
    assert reference.codes is not None and reference.paths is not None
    assert other.codes is not None and other.paths is not None
    if sorted(reference.paths) != sorted(other.paths):
        missing = set(reference.paths) ^ set(other.paths)
        return "paths differ", "", [f"{other.name}: {len(missing)} paths not in both"]
    if other.codes.shape != reference.codes.shape:
        return f"shape {other.codes.shape}", "", []
    row = {p: i for i, p in enumerate(other.paths)}
    b = other.codes[[row[p] for p in reference.paths]].astype(np.float64)
    a = reference.codes.astype(np.float64)
    diff = np.abs(a - b).max(axis=1)
    cosine = (a * b).sum(axis=1) / np.maximum(
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    notes = []
    over = np.flatnonzero(diff > AGREEMENT)
    if len(over):
        originals = sorted({sources[reference.paths[i]] for i in over})
        reasons = [f"{p.parent.name}/{p.name} ({why_different(p)})" for p in originals]
        rest = np.delete(diff, over)
        notes.append(
            f"{other.name}: {len(over)} of {len(diff)} rows differ by more than {AGREEMENT:g} "
            f"(max {diff.max():.3g}, min cosine {cosine.min():.6f}), all copies of "
            f"{len(originals)} original file(s): {'; '.join(reasons)}. The other "
            f"{len(rest)} rows: max abs diff {rest.max() if len(rest) else 0:.2e}."
        )
    scale = np.abs(a).max()
    notes.append(f"{other.name}: largest |code| value {scale:.3g}, mean |code| "
                 f"{np.abs(a).mean():.3g}; max abs diff over all rows {diff.max():.2e}.")
    return f"{diff.max():.2e}", f"{cosine.min():.6f}", notes


def why_different(path: Path) -> str:
    """What cnncodes' decoding does to this file that a plain PIL open + convert does not."""
    from PIL import Image

    with Image.open(path) as image:
        orientation = image.getexif().get(0x0112, 1)
        size, fmt = image.size, image.format
    reasons = []
    if orientation not in (1, None):
        reasons.append(f"EXIF orientation {orientation}")
    if fmt == "JPEG" and min(size) // 512 >= 2:
        reasons.append(f"{size[0]}x{size[1]}: cnncodes decodes it with a JPEG draft at "
                       f"1/{min(size) // 512} scale, short side >= 512")
    if max(size) > 4 * min(size):
        reasons.append("aspect over 4: cnncodes crops the long side")
    return ", ".join(reasons) or f"{size[0]}x{size[1]} {fmt}: no known decoding difference"


def checkout() -> str:
    """The commit of this checkout, and whether cnncodes/ differs from it."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                                "cnncodes"], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    return f"commit {commit}" + (" with uncommitted changes in cnncodes/" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(contenders: list[Contender], args: argparse.Namespace, folder: Path,
           sources: dict[str, Path], rounds: int) -> str:
    n = len(sources)
    reference = next((c for c in contenders if c.name == "cnncodes" and c.seconds), None)
    best_cnncodes = min(reference.seconds) if reference else None
    rows, notes = [], []
    for c in contenders:
        if not c.seconds:
            state = "failed" if c.failures else "not run (yet)"
            rows.append(f"| {c.name} | {c.version} | {n} | {state} | | | | | | "
                        f"{c.failures[-1] if c.failures else ''} |")
            continue
        best = min(c.seconds)
        best_cpu = c.cpu[c.seconds.index(best)]
        ratio = f"{best / best_cnncodes:.2f}x" if best_cnncodes else ""
        if c is reference:
            ratio, diff, cosine = "1.00x", "(reference)", ""
        elif reference is None or c.codes is None:
            diff, cosine = "", ""
        elif c.comparable:
            diff, cosine, found = agreement(reference, c, sources)
            notes += found
        else:
            diff, cosine = "n/a", ""
        produced = len(c.paths) if c.paths is not None else "?"
        runs = " / ".join(f"{s:.1f}" for s in c.seconds)
        rows.append(f"| {c.name} | {c.version} | {produced} | {best:.1f} ({runs}) | "
                    f"{n / best:.1f} | {best_cpu:.1f} | {ratio} | {diff} | {cosine} | "
                    f"{c.note} |")
        if c.failures:
            notes.append(f"{c.name}: {len(c.failures)} failed run(s): {c.failures[-1]}")
    floors = []
    for c in contenders:
        if c.name in FLOORS and c.seconds and best_cnncodes:
            ratio = min(c.seconds) / best_cnncodes
            verdict = "meets" if ratio >= FLOORS[c.name] else "BELOW"
            floors.append(f"- cnncodes vs {c.name}: {ratio:.2f}x, floor {FLOORS[c.name]}x: "
                          f"{verdict}")
    gif = "" if args.no_gif else " (+1 GIF placeholder that every contender leaves out)"
    lines = [
        "# cnncodes against its peers: resnet18 penultimate codes, whole process",
        "",
        f"{n} real JPEGs{gif}: hard links of the {len(set(sources.values()))} hymenoptera "
        f"JPEGs under distinct names, ImageFolder layout (ants/, bees/), page cache warm. "
        f"resnet18 with random-init weights (seed 0) saved as torchvision's DEFAULT weights "
        f"file in a temporary TORCH_HOME (ImageNet weights cannot be downloaded here). "
        f"Batch {args.batch_size}, CPU, torch's default threads, same environment for all; "
        f"each contender a separate process timed from start to exit (interpreter start, "
        f"imports, model load, listing, decoding, forward, writing codes to a file); "
        f"up to {rounds} interleaved run(s) each"
        + (f" (of {args.repeats} asked for)" if rounds < args.repeats else "")
        + ", best counts (all runs in brackets).",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}. "
        f"Date: {datetime.date.today().isoformat()}. cnncodes: {checkout()}.",
        "",
        "| contender | version | images | seconds, best (runs) | img/s | CPU s of best run "
        "| cnncodes speed-up | max abs diff vs cnncodes | min cosine | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        "Speed-up = contender's seconds / cnncodes' seconds (cnncodes' img/s over its). "
        f"Code agreement: row by row, matched by file path, where the preprocessing is "
        f"the same (target: within {AGREEMENT:g}).",
    ]
    loads = [x for c in contenders for x in c.load]
    if loads:
        busy = max(loads) > (os.cpu_count() or 1) / 2
        lines += ["", f"1-minute load average just before each run: {min(loads):.1f} to "
                  f"{max(loads):.1f} on {os.cpu_count()} cores"
                  + (": other work shared the machine, so wall times are noisy; CPU seconds "
                     "(user + sys of the process and its children) are less so." if busy
                     else ".")]
    if floors:
        lines += ["", "Floors from the issue:", *floors]
    if notes:
        lines += ["", "Notes:", *(f"- {note}" for note in notes)]
    lines += ["", "Run: `.venv/bin/python bench/peers.py --images "
              f"{args.images} --python-peers {args.python_peers}` (the peers' venv: see "
              "the docstring of bench/peers.py)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
