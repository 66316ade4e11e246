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
# # A sweep of `placement run` and `placement summarize`
#
# A Hydra multirun (`-m`) relocates the seed problem's points once per combination of
# settings, each in its own folder; `placement summarize` collects the results into one table
# and one plot. In a terminal this is two commands:
#
# ```bash
# placement run -m kernel=matern32,matern52 steps=20 hydra.sweep.dir=sweep
# placement summarize sweep
# ```
#
# Set `PLACEMENT_EXAMPLE_SMALL=1` for a quick run (two steps, few draws; as CI does).

# %%
import os
import shutil
import subprocess
import sys
from pathlib import Path

SMALL = os.environ.get("PLACEMENT_EXAMPLE_SMALL") == "1"
SETTINGS = (["steps=2", "sampler.num_samples=1024", "sampler.adapt_samples=512", "sampler.aim_samples=1024",
             "plots=false"] if SMALL else ["steps=20"])


def placement_cli(*args):
    """Run the `placement` command (the installed script, or this Python's module)."""
    exe = shutil.which("placement")
    cmd = [exe] if exe else [sys.executable, "-m", "placement.cli"]
    done = subprocess.run(cmd + list(args), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"placement {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


# %%
sweep = Path("sweep")
shutil.rmtree(sweep, ignore_errors=True)
SWEEP = ["optimizer.learning_rate=0.05,0.1"] if SMALL else ["kernel=matern32,matern52"]  # small: one compiled program, two jobs
print(placement_cli("run", "-m", *SWEEP, *SETTINGS, f"hydra.sweep.dir={sweep}"))

# %% [markdown]
# One folder per combination, each with `trajectory.csv`, `result.json` and `posterior.nc`:

# %%
for result in sorted(sweep.rglob("result.json")):
    print(result.parent.name, sorted(p.name for p in result.parent.iterdir() if not p.name.startswith(".")))

# %%
print(placement_cli("summarize", str(sweep)))
print((sweep / "summary.md").read_text())
