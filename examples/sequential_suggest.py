# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Measure, suggest, measure: a sequential loop on a CSV
#
# The measurements live in a CSV file. Each round reads it, asks `placement` for a batch of
# new points, "measures" them (here: a known function plus noise, standing in for the
# experiment) and appends the results. `placement.suggest.Suggester` keeps the points it
# suggested until they are measured, so a batch is never asked for twice.
#
# Set `PLACEMENT_EXAMPLE_SMALL=1` for a quick run with a coarse search (as CI does).

# %%
import os

import numpy as np
import pandas as pd

import placement

SMALL = os.environ.get("PLACEMENT_EXAMPLE_SMALL") == "1"
ROUNDS, K = (2, 2) if SMALL else (5, 2)
SEARCH = dict(num_hyper=8, num_fantasies=4, grid=64, restarts=2, steps=30) if SMALL else {}
rng = np.random.default_rng(0)


def experiment(x):
    """The quantity we measure (the Forrester function), with measurement noise."""
    return (6 * x - 2) ** 2 * np.sin(12 * x - 4) + rng.normal(0, 0.1, np.shape(x))


# %% [markdown]
# Four starting measurements, written to a CSV as they would come from the lab:

# %%
x0 = rng.uniform(0, 1, 4)
pd.DataFrame({"x": x0, "y": experiment(x0)}).to_csv("measurements.csv", index=False)
print(pd.read_csv("measurements.csv"))

# %% [markdown]
# One batch, straight from the table (what `placement suggest data=measurements.csv k=2`
# does on the command line):

# %%
print(placement.suggest(pd.read_csv("measurements.csv"), k=K, bounds=[[0, 1]], **SEARCH))

# %% [markdown]
# The loop: ask for a batch, measure it, tell the results, append them to the CSV.

# %%
suggester = placement.suggest.Suggester(pd.read_csv("measurements.csv"), bounds=[[0, 1]], **SEARCH)
for round_ in range(ROUNDS):
    batch = suggester.ask(k=K)
    x_new = batch["x"].to_numpy()
    y_new = experiment(x_new)
    suggester.tell(x_new[:, None], y_new)
    table = pd.concat([pd.read_csv("measurements.csv"), pd.DataFrame({"x": x_new, "y": y_new})])
    table.to_csv("measurements.csv", index=False)
    print(f"round {round_}: measured at {np.round(x_new, 3)}; predictive sd there was "
          f"{np.round(batch['pred_sd'].to_numpy(), 3)}")

print(pd.read_csv("measurements.csv").sort_values("x").to_string(index=False))
