"""The lecture's experiments run end to end from their configs and show what the lecture says."""
import json

import pytest

from experiments import dmlp_digits, generations, perceptron_logic
from jaxdl import tasks


def run(config, workdir):
    return tasks.get(config.task).train_and_evaluate(config, str(workdir), print_fn=lambda s: None)


def test_perceptron_learns_and_or_but_not_xor_and_the_mlp_learns_xor(tmp_path):
    rows = run(perceptron_logic.get_config(), tmp_path)["rows"]
    acc = {(r["model"].split()[0], r["gate"]): r["accuracy"] for r in rows}
    assert acc[("perceptron", "AND")] == acc[("perceptron", "OR")] == 1.0
    assert acc[("perceptron", "XOR")] <= 0.75  # no line separates XOR
    assert acc[("MLP", "XOR")] == 1.0
    assert (tmp_path / "results.md").read_text().count("| perceptron") == 3


def test_dmlp_digits_by_algorithm_4_1_reaches_95_percent(tmp_path):
    result = run(dmlp_digits.get_config(), tmp_path)
    assert result["test_accuracy"] >= 0.95
    assert json.loads((tmp_path / "results.json").read_text())["test_accuracy"] == result["test_accuracy"]


def test_generations_table_over_seeds(tmp_path):
    config = generations.get_config()
    config.num_seeds = 2
    config.perceptron.epochs = 5
    config.mlp.steps = config.dmlp.steps = 300
    result = run(config, tmp_path)
    assert [r["generation"] for r in result["rows"]] == ["perceptron", "MLP", "deep MLP"]
    for r in result["rows"]:
        assert len(r["test_accuracy_per_seed"]) == 2 and r["test_accuracy"] > 0.5
    assert "± " in (tmp_path / "results.md").read_text()


def test_dmlp_rejects_a_wrong_number_of_activations(tmp_path):
    config = dmlp_digits.get_config()
    config.model.activations = ("relu", "identity")
    with pytest.raises(ValueError, match="activations"):
        run(config, tmp_path)
