import pytest
import torch

from common.checkpoint import CheckpointError, atomic_save, load_checkpoint, save_checkpoint
from common.config import ConfigError, build_config, save_config

DEFAULTS = {"train": {"lr": 1e-4, "epochs": 10, "amp": True, "device": "auto"}, "data": {"train": None}}


def test_yaml_then_flags_then_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.01\n  epochs: 3\n")
    cfg = build_config(DEFAULTS, path, {"train.epochs": 5, "train.device": None}, ["train.lr=3e-4", "data.train=x.csv"])
    assert cfg == {"train": {"lr": 3e-4, "epochs": 5, "amp": True, "device": "auto"}, "data": {"train": "x.csv"}}
    assert DEFAULTS["train"]["lr"] == 1e-4  # defaults untouched
    saved = save_config(cfg, tmp_path / "run")
    assert build_config(DEFAULTS, saved) == cfg


def test_unknown_key_lists_valid_ones_and_suggests(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lrr: 0.01\n")
    with pytest.raises(ConfigError) as error:
        build_config(DEFAULTS, path)
    message = str(error.value)
    assert str(path) in message and "train.lrr" in message and "Did you mean 'lr'" in message
    assert "amp, device, epochs, lr" in message
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        build_config(DEFAULTS, None, set_items=["trian.lr=1"])


@pytest.mark.parametrize("item, expected", [("train.epochs=1.5", "train.epochs must be int"),
                                            ("train.amp=3", "train.amp must be bool"),
                                            ("train.lr=fast", "train.lr must be float"),
                                            ("train=3", "train must be a mapping"),
                                            ("train.lr", "key=value")])
def test_wrong_types_are_errors(item, expected):
    with pytest.raises(ConfigError, match=expected):
        build_config(DEFAULTS, None, set_items=[item])


def test_bad_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        build_config(DEFAULTS, path)
    with pytest.raises(ConfigError, match="not found"):
        build_config(DEFAULTS, tmp_path / "missing.yaml")


def test_checkpoint_round_trip_and_corrupt_file(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "a.pth", model=model, optimizer=optimizer, epoch=7, best_metric=0.5,
                           config={"x": 1})
    state = load_checkpoint(path)
    assert state["epoch"] == 7 and state["best_metric"] == 0.5 and state["config"] == {"x": 1}
    assert set(state) >= {"model", "optimizer", "scheduler", "scaler", "rng"}
    assert torch.equal(state["model"]["weight"], model.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["a.pth"]  # no temporary left behind
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="a.pth is unreadable"):
        load_checkpoint(path)


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path):
    path = atomic_save({"v": 1}, tmp_path / "c.pth")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"v": Unpicklable()}, path)
    assert torch.load(path)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]


def test_config_file_paths_work_from_any_folder(tmp_path, monkeypatch):
    from common.config import PROJECT_ROOT, existing_path
    monkeypatch.chdir(tmp_path)
    assert existing_path("configs/pipeline.yaml") == str(PROJECT_ROOT / "configs" / "pipeline.yaml")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "pipeline.yaml").write_text("stage: all\n")
    assert existing_path("configs/pipeline.yaml") == "configs/pipeline.yaml"  # the working directory's comes first
    assert existing_path("nowhere/weights.pth") == "nowhere/weights.pth"  # left for the loader's "not found"
    assert existing_path(None) is None
