"""Runs a training config under several recipe variants and seeds in parallel, then tables mIoU per variant.

How the demo recipe was chosen (docs/benchmarks.md): every variant trains with seeds 0-4, and a recipe counts only
if its worst seed clears the bar, not its mean. Each run is `seglab train CONFIG --set ...` in its own process
(`--jobs` at a time, `--threads` torch threads each), with its own work directory under `--out`; generated
datasets are written once, before the runs start.

    python benchmarks/recipe_sweep.py benchmarks/demo_recipe_variants.yaml --out runs/sweep --jobs 2 --threads 1

The variants file (YAML): `config` (the base run config), `seeds`, `common` (`--set` overrides of every run) and
`variants` (name -> overrides). Results: `OUT/results.json` and a table on stdout (mIoU at every evaluation: mean and
worst over seeds; seconds per iteration).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml


def _overrides(mapping: dict) -> list[str]:
    return [f"{k}={json.dumps(v) if isinstance(v, dict | list) or v is None else v}" for k, v in mapping.items()]


def _prepare_data(config_path: str, overrides: list[str]) -> None:
    from seglab.config import load_config
    from seglab.engine.run import prepare_data

    prepare_data(load_config(config_path, overrides))


def _run(config_path: str, overrides: list[str], work_dir: Path, threads: int, device: str | None,
         stop_at: int | None) -> dict:
    work_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "seglab.cli", "train", config_path, "--work-dir", str(work_dir), "--no-progress",
           *[a for o in overrides + [f"train.threads={threads}"] for a in ("--set", o)],
           *(["--stop-at", str(stop_at)] if stop_at else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    start = time.perf_counter()
    with open(work_dir / "stdout.txt", "w") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    return {"returncode": code, "wall_s": time.perf_counter() - start, **_read_log(work_dir)}


def _read_log(work_dir: Path) -> dict:
    evals, step_times = [], []
    log = work_dir / "log.jsonl"
    for line in log.read_text().splitlines() if log.is_file() else []:
        record = json.loads(line)
        if record["kind"] == "eval":
            evals.append((record["iter"], record["mIoU"]))
        elif record["kind"] == "train":
            step_times.append(record["sec_per_iter"])
    return {"work_dir": str(work_dir), "evals": evals,
            "sec_per_iter": statistics.median(step_times) if step_times else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", help="variants YAML file")
    parser.add_argument("--out", default="runs/sweep")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--device", choices=("cpu", "auto"), default="auto", help="cpu hides CUDA devices")
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--seeds", nargs="*", type=int, help="seeds (default: the file's)")
    parser.add_argument("--table-only", action="store_true", help="table the logs already in --out; train nothing")
    parser.add_argument("--stop-at", type=int, help="stop every run after this iteration (the schedule unchanged)")
    args = parser.parse_args()

    spec = yaml.safe_load(Path(args.variants).read_text())
    config_path, seeds = spec["config"], args.seeds or spec["seeds"]
    common = _overrides(spec.get("common") or {})
    variants = {name: common + _overrides(v or {}) for name, v in spec["variants"].items()
                if not args.only or name in args.only}
    out = Path(args.out)
    jobs = [(name, seed) for name in variants for seed in seeds]
    if args.table_only:
        results = {f"{name}_s{seed}": {"variant": name, "seed": seed, "returncode": 0,
                                       **_read_log(out / f"{name}_s{seed}")} for name, seed in jobs}
    else:
        for overrides in variants.values():  # generated data once per distinct setting, before the parallel runs
            _prepare_data(config_path, overrides)
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = {job: pool.submit(_run, config_path, variants[job[0]] + [f"train.seed={job[1]}"],
                                        out / f"{job[0]}_s{job[1]}", args.threads, args.device, args.stop_at)
                       for job in jobs}
            results = {f"{name}_s{seed}": {"variant": name, "seed": seed, **f.result()}
                       for (name, seed), f in futures.items()}
        (out / "results.json").write_text(json.dumps(results, indent=1))

    for name in variants:
        runs = [r for r in results.values() if r["variant"] == name]
        iters = sorted({it for r in runs for it, _ in r["evals"]})
        cells = []
        for it in iters:
            values = [m for r in runs for i, m in r["evals"] if i == it]
            cells.append(f"@{it} {statistics.mean(values):.3f}/{min(values):.3f}")
        failed = [r["seed"] for r in runs if r["returncode"] != 0]
        speed = [r["sec_per_iter"] for r in runs if r["sec_per_iter"]]
        print(f"{name:>16}: {'  '.join(cells)}  (mean/worst of {len(runs)} seeds; "
              f"{statistics.median(speed) if speed else float('nan'):.3f} s/it"
              f"{'; FAILED seeds ' + str(failed) if failed else ''})")
        finals = [r["evals"][-1][1] if r["evals"] else float("nan") for r in sorted(runs, key=lambda r: r["seed"])]
        print(f"{'':>16}  final per seed: {' '.join(f'{m:.3f}' for m in finals)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
