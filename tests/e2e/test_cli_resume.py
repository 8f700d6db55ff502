"""`seglab train --resume` keeps the run: the run's saved config is the truth, a differing config is an error unless
`--override` (then the differences are printed, logged and the old config kept), nothing in the run directory changes
before training goes on, and the console gets text log lines and evaluation tables with or without a progress bar."""

import json

import pytest
import yaml

from seglab.cli.main import main
from seglab.data.synthetic import generate_shapes


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("shapes"), n_train=8, n_val=2, size=32, seed=5)


@pytest.fixture
def config_file(shapes_root, tmp_path):
    config = {
        "model": {"name": "segformer_b0"},
        "data": {"dataset": "shapes", "root": str(shapes_root), "batch_size": 2, "val_batch_size": 2,
                 "train_transform": {"crop_size": [32, 32], "scale": [32, 32]}},
        "optim": {"lr": 1.0e-3},
        "schedule": {"iters": 6, "warmup_iters": 1},
        "eval": {"interval": 2},
        "train": {"log_interval": 1, "checkpoint_interval": 2, "keep_checkpoints": 1,
                  "work_dir": str(tmp_path / "run")},
    }
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snapshot(directory):
    """Every file under `directory` (tensorboard event files aside) with its bytes."""
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and "tensorboard" not in p.parts}


def test_resume_with_a_differing_config_is_an_error_and_changes_nothing(config_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(config_file), "--set", "schedule.iters=4", "--no-progress"]) == 0
    before = snapshot(run)
    capsys.readouterr()
    # the file says 6 iterations, the run was started with 4: the run's own config wins, the difference is named
    assert main(["train", str(config_file), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one line
    assert "differs from the run's own" in err and "schedule.iters 4 -> 6" in err and "--override" in err
    assert snapshot(run) == before
    # the same values as the run: the run is complete, nothing is trained or rewritten
    assert main(["train", str(config_file), "--set", "schedule.iters=4", "--resume", "--no-progress"]) == 0
    assert "complete (iteration 4 of 4); nothing to train" in capsys.readouterr().out
    assert snapshot(run) == before
    # --override without --resume means nothing
    assert main(["train", str(config_file), "--override", "--no-progress"]) == 2
    assert "--override goes with --resume" in capsys.readouterr().err
    assert snapshot(run) == before


def test_resume_override_continues_and_records_the_changes(config_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(config_file), "--set", "schedule.iters=4", "--no-progress"]) == 0
    old_config = (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", str(config_file), "--resume", "--override", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resuming from iteration 4 of 6" in out
    assert "--override: continuing with the given config" in out and "schedule.iters 4 -> 6" in out
    # the run's schedule had decayed to 0 at iteration 4; the given one is poly over 6 iterations
    assert "the learning rate at iteration 4 is 0 under the run's schedule and 0.000333 under the given" in out
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    notes = [r["message"] for r in records if r["kind"] == "note"]
    assert any("schedule.iters 4 -> 6" in n for n in notes)
    assert [r["iter"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert (run / "config.iter_4.yaml").read_text() == old_config
    assert yaml.safe_load((run / "config.yaml").read_text())["schedule"]["iters"] == 6
    assert json.loads((run / "latest.json").read_text())["iteration"] == 6


def test_resume_from_the_run_directory_alone(config_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(config_file), "--stop-at", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--work-dir", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resuming from iteration 2 of 6" in out
    assert json.loads((run / "latest.json").read_text())["iteration"] == 6
    assert main(["train", "--no-progress"]) == 2
    assert "a run config is needed" in capsys.readouterr().err


def test_console_gets_log_lines_and_evaluation_tables_without_a_progress_bar(config_file, tmp_path, capsys):
    assert main(["train", str(config_file), "--set", "schedule.iters=2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for iteration in (1, 2):
        line = next(line for line in lines if line.startswith(f"iter {iteration}/2  loss "))
        assert " lr " in line and " s/it " in line and " eta 0:00:" in line and line.endswith(" MB")
    assert "evaluation at iteration 2" in out
    assert "disc" in out and "mIoU" in out  # the per-class table with the dataset's class names
    assert "iter 2: mIoU" in out


def test_resume_keeps_superseded_log_records(config_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(config_file), "--stop-at", "2", "--no-progress"]) == 0
    # a killed run had logged past its last checkpoint
    with open(run / "log.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "iter": 3, "loss": 9.0}) + "\n")
    assert main(["train", str(config_file), "--resume", "--no-progress"]) == 0
    superseded = [json.loads(line) for line in (run / "log.superseded.jsonl").read_text().splitlines()]
    assert superseded == [{"kind": "train", "iter": 3, "loss": 9.0}]
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_eta_counts_the_remaining_steps_and_evaluations():
    from seglab.config import load_config
    from seglab.engine.trainer import Trainer

    trainer = Trainer.__new__(Trainer)  # only the log-line arithmetic is exercised
    trainer.config = load_config(None, ["schedule.iters=1000", "eval.interval=300"])
    trainer.evaluate_fn, trainer._part_names, trainer._last_eval_time = object(), None, 20.0
    record = {"iter": 100, "loss": 0.5, "lr": 1e-3, "sec_per_iter": 0.5, "peak_mem_mb": 100.0}
    # 900 steps x 0.5 s + evaluations at 300, 600, 900 and 1000 x 20 s = 450 + 80 s
    assert "eta 0:08:50" in trainer._train_line(record)
    trainer.evaluate_fn = None
    assert "eta 0:07:30" in trainer._train_line(record)
