"""mmsegmentation 1.2.2 in a side environment, built by the tests on first use and cached in `.cache/mmseg-env`.

mmseg 1.2.2 pins mmcv < 2.2 and mmengine < 1.0, which do not install next to the main environment's torch; the side
environment is a plain `python -m venv` that sees the main environment's packages (torch, numpy, scipy, ...) through a
`.pth` file appended after its own site-packages, and holds only what the main environment lacks:

- `PINS`, installed with `--no-deps` (pip must not resolve mmcv / mmengine against torch), and `imagecorruptions`
  for the corruption comparison (its `opencv-python` requirement is met by the headless wheel);
- `SUPPORT`, the pure-Python imports of those (mmengine's `addict`, `yapf`, `termcolor`, mmseg's `prettytable`, the
  multimodal `ftfy` / `regex`), scikit-image (for imagecorruptions) and `opencv-python-headless` for mmengine's and
  mmcv's `import cv2`, installed with normal resolution; requirements the main environment already satisfies (numpy,
  matplotlib, rich, ...) are left to it;
- a stand-in `mmcv/_ext.py`: mmcv-lite has no compiled ops, yet mmseg imports `mmcv.ops` (for the models that use them);
  every attribute of the stand-in is a function that raises, so importing works and only a model that calls an op
  fails, with a message that says so.

`mmseg_python()` returns the side interpreter, building it when the stamp file (the pins, the support list, the main
site-packages path, the stand-in's hash) is missing or stale; a file lock keeps two pytest processes from building it at once. It returns
None with the reason when the build fails (no network), and the tests skip with that reason (a failure under CI=true,
see tests/conftest.py). The runner (`mmseg_runner.py`) then runs in that interpreter, never importing seglab.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
ENV_DIR = ROOT / ".cache" / "mmseg-env"
STAMP = ENV_DIR / "seglab-stamp.json"
LOCK = ROOT / ".cache" / "mmseg-env.lock"
RUNNER = Path(__file__).with_name("mmseg_runner.py")
TESTKIT = Path(__file__).resolve().parents[1] / "testkit.py"  # the runner imports its `randomize_`
RUNS = ROOT / ".cache" / "mmseg-runs"

# imagecorruptions rides along for test_corruptions_reference.py (its own code, patched there for today's libraries)
PINS = ("mmengine==0.10.7", "mmcv-lite==2.1.0", "mmsegmentation==1.2.2", "imagecorruptions==1.1.2")
# cv2 5.x is not what mmcv 2.1 was written against; 4.10+ wheels work with numpy 1.x and 2.x
SUPPORT = ("addict", "yapf", "termcolor", "prettytable", "ftfy", "regex", "opencv-python-headless>=4.10,<5",
           "safetensors", "scikit-image")

EXT_STUB = '''"""Stand-in for mmcv's compiled ops (mmcv-lite has none), written by seglab's mmseg_env.py."""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def unavailable(*args, **kwargs):
        raise RuntimeError(f"mmcv._ext.{name}: mmcv-lite has no compiled ops; the mmseg side environment of seglab's "
                           f"tests runs only models without mmcv ops")

    return unavailable
'''

_CACHED: tuple[Path | None, str] | None = None


def _main_site_dirs() -> list[str]:
    """The main environment's package directories (the one holding torch first)."""
    dirs = [str(Path(torch.__file__).resolve().parents[1]), sysconfig.get_paths()["purelib"],
            sysconfig.get_paths()["platlib"]]
    return list(dict.fromkeys(dirs))


def _stamp() -> dict:
    return {"pins": list(PINS), "support": list(SUPPORT), "main_site": _main_site_dirs(),
            "python": sys.version.split()[0], "ext_stub": hashlib.sha256(EXT_STUB.encode()).hexdigest()[:16]}


def _python() -> Path:
    return ENV_DIR / "bin" / "python"


def _run(args: list[str], timeout: float) -> None:
    proc = subprocess.run(args, check=False, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise RuntimeError(f"`{' '.join(args[:6])} ...` failed ({proc.returncode}):\n" + "\n".join(tail))


def _build() -> None:
    shutil.rmtree(ENV_DIR, ignore_errors=True)
    _run([sys.executable, "-m", "venv", str(ENV_DIR)], timeout=300)
    python = str(_python())
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # a .pth line is appended to sys.path after the side environment's own site-packages
    (Path(site) / "zz_seglab_main_env.pth").write_text("\n".join(_main_site_dirs()) + "\n")
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q"]
    _run([*pip, "--no-deps", *PINS], timeout=900)
    _run([*pip, *SUPPORT], timeout=900)
    (Path(site) / "mmcv" / "_ext.py").write_text(EXT_STUB)
    _run([python, "-c", "import mmseg, mmseg.models, torch; from mmengine.registry import init_default_scope"],
         timeout=300)
    STAMP.write_text(json.dumps(_stamp(), indent=1) + "\n")


def mmseg_python() -> tuple[Path | None, str]:
    """(the side environment's python, "") once it is ready, or (None, why not); built at most once per process."""
    global _CACHED
    if _CACHED is None:
        _CACHED = _ensure()
    return _CACHED


def _ensure() -> tuple[Path | None, str]:
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the stamp
        try:
            if STAMP.is_file() and json.loads(STAMP.read_text()) == _stamp() and _python().exists():
                return _python(), ""
            start = time.monotonic()
            _build()
            print(f"built the mmseg side environment {ENV_DIR} in {time.monotonic() - start:.0f} s", file=sys.stderr)
            return _python(), ""
        except (RuntimeError, OSError, subprocess.SubprocessError, json.JSONDecodeError) as exc:
            return None, f"cannot build the mmsegmentation 1.2.2 side environment in {ENV_DIR}: {exc}"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run_path(spec: dict) -> Path:
    """Where the run of `spec` is cached: a hash of the spec, the runner, `testkit.py` and the environment's stamp."""
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode() + RUNNER.read_bytes() + TESTKIT.read_bytes()
                         + STAMP.read_bytes()).hexdigest()[:20]
    return RUNS / f"{key}.safetensors"


def prefetch_mmseg(specs: list[dict]) -> None:
    """Runs the specs not yet cached in one `mmseg_runner.py` process (mmseg's import alone takes seconds).

    Raises:
        RuntimeError: when the environment cannot be built, naming why, or when a spec fails, with the runner's
            error output.
    """
    python, reason = mmseg_python()
    if python is None:
        raise RuntimeError(reason)
    RUNS.mkdir(parents=True, exist_ok=True)
    with open(RUNS / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second pytest process waits, then finds the runs cached
        try:
            _prefetch(python, specs)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _prefetch(python: Path, specs: list[dict]) -> None:
    todo = {}
    for spec in specs:
        output = _run_path(spec)
        if not output.is_file() and output not in todo:
            spec_file = output.with_suffix(".json")
            spec_file.write_text(json.dumps({**spec, "output": str(output.with_suffix(".partial"))}, indent=1))
            todo[output] = spec_file
    if not todo:
        return
    proc = subprocess.run([str(python), str(RUNNER), *map(str, todo.values())], check=False, capture_output=True,
                          text=True, timeout=1800, cwd=ROOT)
    for output in todo:
        if output.with_suffix(".partial").is_file():
            output.with_suffix(".partial").rename(output)
    failed = [str(spec_file) for output, spec_file in todo.items() if not output.is_file()]
    if failed or proc.returncode:
        raise RuntimeError(f"mmseg runner failed on {', '.join(failed)}:\n{proc.stderr[-6000:]}")


def run_mmseg(spec: dict) -> dict[str, torch.Tensor]:
    """The tensors `mmseg_runner.py` writes for `spec` (its docstring lists the fields; `output` is filled in here),
    run in the side environment unless cached in `.cache/mmseg-runs/`, in which case a rerun costs only the file
    read."""
    from safetensors.torch import load_file

    prefetch_mmseg([spec])
    return load_file(str(_run_path(spec)))
