import pytest
import torch
from torch.utils.data import TensorDataset

from common.checkpoint import load_checkpoint
from common.engine import NonFiniteLossError, Trainer, make_loader


def make_trainer(tmp_path, step_fn, epochs=2):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Trainer(model, optimizer, None, step_fn, tmp_path / "ckpt", tmp_path / "logs", "Toy", torch.device("cpu"),
                   epochs, config={"toy": True}, checkpoint_every=1)


def loader():
    data = TensorDataset(torch.arange(12, dtype=torch.float32).reshape(6, 2) / 12, torch.ones(6, 1))
    return make_loader(data, batch_size=2, shuffle=True, num_workers=0, collate_fn=None, seed=0)


def mse_step(model, batch):
    inputs, targets = batch
    return {"loss": ((model(inputs) - targets) ** 2).mean()}


def test_non_finite_loss_stops_naming_the_batch_and_keeps_last_checkpoint(tmp_path):
    calls = {"n": 0}

    def step(model, batch):
        calls["n"] += 1
        terms = mse_step(model, batch)
        if calls["n"] == 5:  # epoch 2, batch 1
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    trainer = make_trainer(tmp_path, step)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 2, batch 1") as error:
        trainer.fit(loader())
    assert "Toy_last.pth" in str(error.value)
    assert load_checkpoint(tmp_path / "ckpt" / "Toy_last.pth")["epoch"] == 1


def test_checkpoints_and_history(tmp_path):
    history = make_trainer(tmp_path, mse_step).fit(loader())
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[1]["train/loss"] < history[0]["train/loss"]
    names = sorted(p.name for p in (tmp_path / "ckpt").glob("*.pth"))
    assert names == ["Toy_best.pth", "Toy_epoch1.pth", "Toy_epoch2.pth", "Toy_final.pth", "Toy_last.pth",
                     "Toy_previous.pth"]
    assert load_checkpoint(tmp_path / "ckpt" / "Toy_previous.pth")["epoch"] == 1  # the last of the epoch before
    state = load_checkpoint(tmp_path / "ckpt" / "Toy_final.pth")
    assert state["config"] == {"toy": True} and state["epoch"] == 2 and "rng" in state


def test_auto_resume_skips_a_corrupt_checkpoint(tmp_path, capsys):
    make_trainer(tmp_path, mse_step, epochs=2).fit(loader())
    (tmp_path / "ckpt" / "Toy_last.pth").write_bytes(b"garbage")
    trainer = make_trainer(tmp_path, mse_step, epochs=3)
    path = trainer.auto_resume_path()
    assert path.name == "Toy_best.pth"
    assert "Toy_last.pth is unreadable" in capsys.readouterr().out
