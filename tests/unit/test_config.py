import pytest

from seglab.config import ConfigError, dump_config, load_config


def write(path, text):
    path.write_text(text)
    return path


def test_base_and_overrides(tmp_path):
    write(tmp_path / "base.yaml", "optim: {lr: 1.0e-3, weight_decay: 0.05}\nschedule: {iters: 100}\n")
    cfg = write(tmp_path / "run.yaml", "base: base.yaml\noptim: {lr: 2.0e-3}\ndata: {batch_size: 4}\n")
    config = load_config(cfg, ["schedule.iters=7", "train.amp=bf16", "optim.betas=[0.8, 0.9]"])
    assert config.optim.lr == 2e-3  # child wins over base
    assert config.optim.weight_decay == 0.05  # base value kept
    assert config.schedule.iters == 7  # --set wins over the file
    assert config.train.amp == "bf16"
    assert config.optim.betas == (0.8, 0.9)
    assert config.data.batch_size == 4


def test_unknown_key_lists_valid_keys(tmp_path):
    cfg = write(tmp_path / "run.yaml", "optim: {lrr: 1.0}\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) optim.lrr; valid keys of optim: name, lr"):
        load_config(cfg)
    with pytest.raises(ConfigError, match="unknown key.* bogus;"):
        load_config(None, ["bogus.x=1"])


@pytest.mark.parametrize("assignment, message", [
    ("data.batch_size=abc", "data.batch_size: expected an integer, got 'abc'"),
    ("data.batch_size=0", "data.batch_size: expected an integer >= 1, got 0"),
    ("data.batch_size=2.5", "data.batch_size: expected an integer, got 2.5"),
    ("train.amp=fp32", "train.amp: expected one of none, bf16, fp16, got 'fp32'"),
    ("data.train_transform.flip_prob=1.5", "flip_prob: expected between 0 and 1, got 1.5"),
    ("eval.crop_size=[512]", "eval.crop_size: expected a list of 2 integers or null, got [512]"),
    ("data.train_transform.crop_size=[64, 64.5]", "crop_size: expected a list of 2 integers, got [64, 64.5]"),
    ("train.compile=1", "train.compile: expected a boolean (true/false), got 1"),
    ("optim.grad_clip=-1", "optim.grad_clip: expected > 0, got -1.0"),
    ("loss.class_weights=[1, x]", "loss.class_weights: expected a list of numbers or null, got [1, 'x']"),
    ("model.overrides=3", "model.overrides: expected a mapping, got 3"),
    ("schedule.iters=.inf", "schedule.iters: expected an integer, got inf"),
])
def test_values_are_typed_and_ranged(assignment, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [assignment])
    assert message in str(info.value)


def test_typed_values_are_converted():
    config = load_config(None, ["optim.lr=1", "eval.scales=[1, 1.5]", "optim.grad_clip=null", "train.ema=0.999"])
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.eval.scales == (1.0, 1.5)
    assert config.optim.grad_clip is None and config.train.ema == 0.999


def test_only_one_base_level(tmp_path):
    write(tmp_path / "a.yaml", "schedule: {iters: 1}\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    cfg = write(tmp_path / "c.yaml", "base: b.yaml\n")
    with pytest.raises(ConfigError, match="may not have a base"):
        load_config(cfg)


def test_yaml_is_never_executed(tmp_path):
    cfg = write(tmp_path / "run.yaml", "optim: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(cfg)


def test_scientific_notation_without_dot_is_a_number():
    assert load_config(None, ["optim.lr=6e-5"]).optim.lr == pytest.approx(6e-5)
    with pytest.raises(ConfigError, match="expected a number"):
        load_config(None, ["optim.lr=fast"])


def test_dump_round_trips(tmp_path):
    config = load_config(None, ["data.train_transform.crop_size=[64, 96]"])
    path = write(tmp_path / "dumped.yaml", dump_config(config))
    assert load_config(path) == config


def test_repo_configs_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    files = [p for p in root.rglob("*.yaml") if not p.name.startswith("_")]
    assert files
    from seglab.engine.instance import is_instance_config
    from seglab.instance.mask_rcnn import MASK_RCNN_VARIANTS, resolve_mask_rcnn_options
    from seglab.registry import resolve_options

    for path in files:
        config = load_config(path)
        if is_instance_config(config):  # torchvision detection models: their own table and options
            assert config.model.name in MASK_RCNN_VARIANTS, path
            resolve_mask_rcnn_options(dict(config.model.overrides))
            continue
        resolve_options(config.model.name, dict(config.model.overrides))  # the model exists, its overrides are valid
