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
# # Sensor placement with your own PyMC model
#
# Six temperature sensors along a 10 m corridor. A Gaussian process models the temperature
# field; we want the sensors where they leave the least predictive variance over the
# corridor. The objective is a `pm.Deterministic` of the model: the average predictive
# variance of the field over 30 points, given the hyperparameters. `placement` estimates its
# posterior mean F(X) and dF/dX, and moves the sensors along the gradient.
#
# Set `PLACEMENT_EXAMPLE_SMALL=1` to run it in seconds with few draws and steps (as CI does).

# %%
import os

import numpy as np
import pymc as pm
import pytensor.tensor as pt

import placement

SMALL = os.environ.get("PLACEMENT_EXAMPLE_SMALL") == "1"
STEPS = 3 if SMALL else 40
SAMPLER = dict(num_samples=1024, adapt_samples=512, aim_samples=1024) if SMALL else {}

# %% [markdown]
# ## The model
#
# The design container `X` holds the sensor positions, `y` the readings taken there. The
# stock `pm.gp.cov.ExpQuad` kernel is fine: its distance computation is rewritten into an
# exactly differentiable form when the model is exported.

# %%
x_sensors = np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])  # all bunched at one end
readings = np.array([14.1, 14.6, 15.2, 15.9, 16.3, 16.8])
grid = np.linspace(0.0, 10.0, 30)[:, None]

with pm.Model() as model:
    X = pm.Data("X", x_sensors)
    y = pm.Data("y", readings)
    ell = pm.InverseGamma("ell", mu=3.0, sigma=1.0)
    eta = pm.HalfNormal("eta", 3.0)
    sigma = pm.HalfNormal("sigma", 0.5)
    level = pm.Normal("level", 16.0, 5.0)
    cov = eta**2 * pm.gp.cov.ExpQuad(1, ls=ell)
    gp = pm.gp.Marginal(mean_func=pm.gp.mean.Constant(level), cov_func=cov)
    gp.marginal_likelihood("obs", X=X[:, None], y=y, sigma=sigma)
    K = cov(X[:, None]) + (sigma**2 + 1e-6) * pt.eye(len(x_sensors))
    Ks = cov(X[:, None], grid)
    v = pt.linalg.solve(K, Ks, assume_a="pos")
    pm.Deterministic("avg_var", pt.mean(eta**2 - pt.sum(Ks * v, axis=0)))

# %% [markdown]
# ## The gradient at the current positions
#
# Every number comes with a Monte Carlo standard error; `trusted` says whether every check
# passed.

# %%
est = placement.gradient(model, objective="avg_var", seed=0, **SAMPLER)
print(f"F = {est.F:.4f} +- {est.F_se:.2g}, trusted: {est.trusted}")
print("dF/dX:", np.round(est.grad, 4))
print("  +-  ", np.round(est.grad_se, 4))

# %% [markdown]
# The posterior behind the estimate, as ArviZ data:

# %%
import arviz as az

idata = est.to_inference_data()
print(az.summary(idata, var_names=["ell", "eta", "sigma", "avg_var"], kind="stats"))

# %% [markdown]
# ## Moving the sensors
#
# Minimise F within the corridor, keeping the sensors at least 0.5 m apart. The readings stay
# as they are (see "Relocating a design" in the documentation for what that means): the
# variance objective depends on them only through the hyperparameters.

# %%
run = placement.relocate(model, objective="avg_var", steps=STEPS, direction="minimize", learning_rate=0.3,
                         constraints={"lower": 0.0, "upper": 10.0, "min_spacing": 0.5}, seed=0, **SAMPLER)
print("start:", run.X0)
print("final:", np.round(run.X, 2))
print(f"F: {run.trajectory['F'].iloc[0]:.4f} -> {run.F:.4f} +- {run.F_se:.2g} ({run.stop_reason})")

# %%
fig = run.plot()
fig.savefig("sensor_placement.png", dpi=100)
