import json

import pytest
import torch
from typer.testing import CliRunner

from netpress import zoo
from netpress.cli import app
from netpress.data import load_dataset
from netpress.errors import BudgetError, DataError, OutputError
from netpress.evaluate import evaluate, predict
from tests.conftest import TRAINED, needs_fashion_mnist

FLOORS = {"lenet300": 0.88, "lenet5": 0.905, "resnet20": 0.915, "vgg": 0.91, "mobilenetv2": 0.915}


def test_every_zoo_model_builds_and_runs():
    import torch

    for name in zoo.ZOO:
        assert zoo.build(name)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@needs_fashion_mnist
@pytest.mark.parametrize("name", TRAINED)
def test_checkpoint_reproduces_its_manifest_accuracy_exactly(name):
    record = zoo.load_manifest()[name]
    result = evaluate(zoo.load_pretrained(name), load_dataset(record["dataset"], "test"))
    assert result.accuracy == record["test_accuracy"]
    assert result.accuracy >= FLOORS[name]
    assert record["command"].startswith(f"netpress zoo train {name}")


@pytest.mark.parametrize("name", TRAINED)
def test_logits_do_not_depend_on_the_samples_evaluated_with_them(name):
    """Evaluation batches for speed; a logit that moved with its batch's other samples, or with the length
    of the evaluation set, would move reported accuracies."""
    model = zoo.load_pretrained(name)
    x = torch.randn(300, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    logits = predict(model, x)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    assert torch.equal(predict(model, x[order]), logits[order])
    assert torch.equal(predict(model, x[37:237]), logits[37:237])
    assert torch.equal(torch.cat([predict(model, x[i : i + 1]) for i in range(0, 300, 50)]), logits[::50])


def test_all_zoo_models_are_trained():
    assert set(TRAINED) == set(zoo.ZOO)


@needs_fashion_mnist
def test_train_writes_a_checkpoint_its_manifest_vouches_for(tmp_path, monkeypatch):
    monkeypatch.setenv("NETPRESS_QUIET", "1")
    record = zoo.train("lenet300", epochs=1, out_dir=tmp_path)
    path = tmp_path / "lenet300.safetensors"
    assert json.loads((tmp_path / "manifest.json").read_text())["lenet300"] == record
    assert record["sha256"] == zoo.registry.sha256(path) and record["file_bytes"] == path.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet300.safetensors", "manifest.json"]


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_a_damaged_manifest_in_the_output_folder_is_refused_before_training(tmp_path, monkeypatch, text):
    (tmp_path / "manifest.json").write_text(text)
    monkeypatch.setattr(zoo.registry, "fit", lambda *a, **k: pytest.fail("trained before the manifest was read"))
    with pytest.raises(OutputError, match="manifest"):
        zoo.train("lenet300", epochs=1, out_dir=tmp_path)
    assert (tmp_path / "manifest.json").read_text() == text


def test_a_folder_where_the_checkpoint_goes_is_refused_before_training(tmp_path, monkeypatch):
    (tmp_path / "lenet300.safetensors").mkdir()
    monkeypatch.setattr(zoo.registry, "fit", lambda *a, **k: pytest.fail("trained before the output was checked"))
    with pytest.raises(OutputError, match="lenet300.safetensors: is a directory"):
        zoo.train("lenet300", epochs=1, out_dir=tmp_path)


def test_fit_trains_on_the_given_images_reproducibly(monkeypatch):
    """``fit`` is the recipe without the manifest (a benchmark trains on half the training split with it)."""
    monkeypatch.setenv("NETPRESS_QUIET", "1")
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 1, 28, 28, generator=generator), torch.randint(0, 10, (200,), generator=generator)
    first, again = zoo.fit("lenet300", x, y, epochs=1), zoo.fit("lenet300", x, y, epochs=1)
    assert not first.training
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    torch.manual_seed(0)  # the initialisation fit starts from
    assert not torch.equal(first.fc1.weight, zoo.build("lenet300").fc1.weight)
    with pytest.raises(BudgetError, match="epochs"):
        zoo.fit("lenet300", x, y, epochs=0)
    with pytest.raises(DataError, match="one label per input"):
        zoo.fit("lenet300", x, y[:-1])
    with pytest.raises(DataError, match="inputs of shape"):
        zoo.fit("lenet300", x[:, :, :8, :8], y)


@needs_fashion_mnist
def test_zoo_train_leaves_the_shipped_checkpoints_alone_and_compares_with_them(tmp_path, monkeypatch):
    monkeypatch.setenv("NETPRESS_QUIET", "1")
    monkeypatch.chdir(tmp_path)
    shipped = zoo.registry.sha256(zoo.CHECKPOINT_DIR / "lenet300.safetensors")
    done = CliRunner().invoke(app, ["zoo", "train", "lenet300", "--epochs", "1"])
    assert done.exit_code == 0, done.output
    assert "not the shipped checkpoint" in done.output and (tmp_path / "netpress-zoo" / "lenet300.safetensors").is_file()
    assert zoo.registry.sha256(zoo.CHECKPOINT_DIR / "lenet300.safetensors") == shipped
