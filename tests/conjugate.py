"""Bayesian linear regression with known noise: posterior and F(X) in closed form.

y_i = phi(x_i)^T w + e_i, e_i ~ N(0, noise^2), w ~ N(0, prior_sd^2 I), phi(x) = (1, x, sin x).
f(w, X) = mean_i phi(x_i)^T w + c * |w|^2, so F(X) = mean_i phi(x_i)^T m + c (|m|^2 + tr S).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pymc as pm
import pytensor.tensor as pt


def features_np(X):
    return jnp.stack([jnp.ones_like(X), X, jnp.sin(X)], axis=1)


def closed_form_F(X, y, prior_sd, noise, c):
    Phi = features_np(X)
    S = jnp.linalg.inv(jnp.eye(3) / prior_sd**2 + Phi.T @ Phi / noise**2)
    m = S @ Phi.T @ y / noise**2
    return jnp.mean(Phi @ m) + c * (m @ m + jnp.trace(S))


def closed_form(X, y, prior_sd=1.0, noise=0.5, c=0.3):
    X = jnp.asarray(X)
    y = jnp.asarray(y)
    F, g = jax.value_and_grad(closed_form_F)(X, y, prior_sd, noise, c)
    return float(F), np.asarray(g)


def build(X=None, y=None, prior_sd=1.0, noise=0.5, c=0.3, seed=0, n=8):
    rng = np.random.default_rng(seed)
    X = np.linspace(-2, 2, n) if X is None else np.asarray(X, float)
    if y is None:
        w = rng.normal(0, prior_sd, 3)
        y = np.asarray(features_np(jnp.asarray(X)) @ w) + noise * rng.normal(size=len(X))
    with pm.Model() as model:
        Xd = pm.Data("X", X)
        yd = pm.Data("y", np.asarray(y, float))
        w = pm.Normal("w", 0.0, prior_sd, shape=3)
        Phi = pt.stack([pt.ones_like(Xd), Xd, pt.sin(Xd)], axis=1)
        mu = pt.dot(Phi, w)
        pm.Normal("obs", mu=mu, sigma=noise, observed=yd)
        pm.Deterministic("f", pt.mean(mu) + c * pt.sum(w**2))
    return model
