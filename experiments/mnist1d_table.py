"""The MNIST-1D table (Greydanus 2020, Table 1): three models × {ordered, shuffled}, 5 seeds each.

  python launch.py --config=experiments/mnist1d_table.py --workdir=runs/mnist1d_table

Writes `W/results.md` and `W/results.json` (rows: model, shuffled, seeds,
test_accuracy_mean, test_accuracy_std). Paper: logreg 32 %, MLP 68 %, CNN 94 %;
shuffled 32 %, 68 %, 56 %. The 5 seeds of each row train as one vmapped program.
Measured numbers and wall time: README, "Results".
"""
import ml_collections

from experiments import mnist1d


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.task = "table"
    config.title = "MNIST-1D (Greydanus 2020), test accuracy over seeds"
    # Shared by every row: `--config.num_steps=600 --config.num_seeds=2` changes all.
    config.num_steps = 6000
    config.num_seeds = 5
    config.rows = ml_collections.ConfigDict()
    for model in ("logreg", "mlp", "cnn"):
        for shuffled in (False, True):
            row = mnist1d.get_config(model + (",shuffled" if shuffled else ""))
            row.num_seeds = config.get_ref("num_seeds")
            row.num_steps = config.get_ref("num_steps")
            row.log_every = 2000
            row.eval_every = config.get_ref("num_steps")
            row.checkpoint_every = config.get_ref("num_steps")
            name = model + ("_shuffled" if shuffled else "")
            config.rows[name] = {"index": len(config.rows), "config": row,
                                 "labels": {"model": model, "shuffled": shuffled}}
    return config
