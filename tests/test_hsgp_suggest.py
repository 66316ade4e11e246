"""`placement suggest` with approx=hsgp (placement/suggest/hsgp.py).

- Algebra: the weight-space criteria (m* x m* posterior, rank-k batch updates, ek_variance's
  Fisher information from phi^T phi) equal the exact path's own code run on the HSGP's dense
  covariance phi diag(s^2) phi^T (criteria.kmat swapped for it; the exact code takes the prior
  variance at G as eta^2, so the HSGP side is shifted by eta^2 - k_HSGP(x, x) there): values
  and B-gradients of every criterion to 1e-7 relative (rounding through covariances of
  condition ~1e4; 1e-12 measured), at m = 200 > n (P = phi^T phi rank-deficient).
- Accuracy: at m = 200 each criterion and its gradient differ from the exact GP's, at fixed
  hyperparameters, by at most the exact effect of the prior-variance error at G plus 2x the
  first-order prediction |dC/dt| at t = 0 along K(t) = K_exact + t (K_HSGP - K_exact)
  (central differences of the exact path's code): the approximation error is what the kernel
  error predicts; the values are within 3e-3 relative, the gradients within 15% (9% measured for
  expected_total_variance, whose gradient is small at this batch).
- Both run as two compiled programs per criterion (the HSGP's, and the exact code's with t an
  input: t = 0 is the exact GP (its numbers to 1e-14), t = +-h the central difference, t = 1 the
  dense HSGP), shared by the two tests; op-by-op (unjitted) they took 4-5x as long.
- The hyperparameter log density equals a PyMC model built with pm.gp.HSGP.prior_linearized
  and a dense MvNormal likelihood at the same values (same priors, L and centre), to 1e-9.
- End to end: suggest(..., approx="hsgp") for MAP and Bayes, pending points, and one clear
  error for each setting that cannot work.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import placement.suggest.criteria as crit_mod
from placement.errors import PlacementError
from placement.suggest import criteria, hsgp
from placement.suggest.kernel import Kernel, kmat
from placement.suggest.search import grid_points

KER = Kernel("matern52")
HYP = (np.array([[0.2], [0.35]]), np.array([1.0, 0.8]), np.array([0.1, 0.2]))  # two draws


def _data(n=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (n, 1))
    y = np.sin(6 * X[:, 0]) + 0.1 * rng.normal(size=n)
    return X, (y - y.mean()) / y.std()


M_LARGE = 200  # basis functions: the accuracy test's m, and the algebra test's (m > n: P is rank-deficient)
H = 1e-2  # central difference in t: its own error is O(h^2) of the second-order term


def _mixed_kmat(basis, t):
    """kmat with the covariance K_exact + t (K_HSGP - K_exact); t = 1: the HSGP's, t = 0: the exact
    GP's (t is a traced input, so one compiled program serves every t)."""
    def km(kernel, A, B, ls, eta):
        s = hsgp.scales(kernel.name, basis, ls, eta)
        Kh = (hsgp.features(basis, A) * s**2) @ hsgp.features(basis, B).T
        Ke = kmat(kernel, A, B, ls, eta)
        return Ke + t * (Kh - Ke)

    return km


@functools.lru_cache(maxsize=None)
def _exact_program(kind):
    """Jitted (t, basis, X, y, G, hyper, z, B) -> value and B-gradient of a criterion through
    criteria.py's exact code, its kmat swapped for _mixed_kmat(basis, t) while the program is
    traced (the factoriser's cache is cleared around it, so no other caller sees the swap)."""
    c = criteria.criterion(kind)

    def run(t, basis, X, y, G, hyper, z, B):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(crit_mod, "kmat", _mixed_kmat(basis, t))
            criteria._factoriser.cache_clear()
            try:
                data = criteria.crit_data(X, y, G, hyper, z, KER)
                return jax.value_and_grad(lambda b: c.value(KER, b, data))(B)
            finally:
                criteria._factoriser.cache_clear()

    return jax.jit(run)


@functools.lru_cache(maxsize=None)
def _hsgp_program(kind):
    """Jitted (basis, X, y, G, hyper, z, B) -> value and B-gradient through hsgp.py, as it is
    and shifted: with the prior variance at G taken as eta^2, as criteria.py's exact code takes
    it, instead of the HSGP's own k_HSGP(x, x) (the difference delta does not depend on B:
    ek_variance's value moves by its mean)."""
    c = criteria.criterion(kind)

    def run(basis, X, y, G, hyper, z, B):
        data = hsgp.crit_data(X, y, G, hyper, z, KER, basis)
        phiG = hsgp.features(basis, data.G)
        delta = data.eta[:, None] ** 2 - data.s**2 @ (phiG**2).T  # (M, g) eta^2 - k_HSGP(x, x)
        v, g = jax.value_and_grad(lambda b: c.value(KER, b, data))(B)
        if kind == "ek_variance":
            vs, gs = v + jnp.mean(delta), g
        else:
            shifted = data._replace(var_G=data.var_G + delta)
            vs, gs = jax.value_and_grad(lambda b: c.value(KER, b, shifted))(B)
        return v, g, vs, gs

    return jax.jit(run)


@functools.lru_cache(maxsize=None)
def _paths(kind):
    """Every number the two tests below read, for one criterion at the fixed setting: the HSGP's
    (value, gradient) as is ("hsgp") and shifted ("shift"), and the exact code's with the
    covariance K_exact + t (K_HSGP - K_exact) at t = 0 ("exact"), +-h and 1 ("dense")."""
    X, y, G, z, B = _setting()
    basis = hsgp.make_basis(X, M_LARGE, 2.0)
    hyper = tuple(jnp.asarray(h, dtype=jnp.float64) for h in criteria.criterion(kind).draws(*HYP))
    args = (basis, jnp.asarray(X), jnp.asarray(y), jnp.asarray(G), hyper, jnp.asarray(z), B)
    vh, gh, vs, gs = _hsgp_program(kind)(*args)
    exact = _exact_program(kind)
    out = {"hsgp": (vh, gh), "shift": (vs, gs)}
    for name, t in (("exact", 0.0), ("plus", H), ("minus", -H), ("dense", 1.0)):
        out[name] = exact(jnp.asarray(t), *args)
    return {k: (float(v), np.asarray(g)) for k, (v, g) in out.items()}


def _setting():
    X, y = _data()
    G = grid_points(1, 48, 0)
    z = criteria.fantasy_normals(4, 2, 3, 0)
    B = jnp.asarray([[0.12], [0.55], [0.93]])
    return X, y, G, z, B


@pytest.mark.parametrize("kind", criteria.CRITERIA)
def test_weight_space_equals_dense_hsgp(kind):
    p = _paths(kind)
    (vh, gh), (vd, gd) = p["shift"], p["dense"]
    assert abs(vh - vd) <= 1e-7 * abs(vd) + 1e-12, (vh, vd)
    assert np.linalg.norm(gh - gd) <= 1e-7 * np.linalg.norm(gd) + 1e-10, (gh, gd)


@pytest.mark.parametrize("kind", criteria.CRITERIA)
def test_large_m_matches_exact_within_kernel_error(kind):
    p = _paths(kind)
    (vh, gh), (vs, gs), (ve, ge) = p["hsgp"], p["shift"], p["exact"]
    (vp, gp), (vm, gm) = p["plus"], p["minus"]
    dv, dg = (vp - vm) / (2 * H), (gp - gm) / (2 * H)
    # the HSGP differs from the exact GP by its kernel error off the diagonal at G (first order:
    # dv, dg) and by its prior variance at G (vh - vs, gh - gs: computed exactly)
    assert abs(vh - ve) <= abs(vh - vs) + 2.0 * abs(dv) + 1e-12, (vh, vs, ve, dv)
    assert np.linalg.norm(gh - ge) <= np.linalg.norm(gh - gs) + 2.0 * np.linalg.norm(dg) + 1e-10, (gh, gs, ge, dg)
    assert abs(vh - ve) <= 3e-3 * abs(ve)  # 1.1e-3 to 1.8e-3 measured: mostly the prior variance near the box's edges
    assert np.linalg.norm(gh - ge) <= 0.15 * np.linalg.norm(ge) + 1e-10  # 9% measured (expected_total_variance)


@pytest.mark.parametrize("name,d,m", [("matern52", 1, 12), ("matern32", 2, 5), ("expquad", 2, 6)])
def test_hyper_density_matches_pymc_hsgp(name, d, m):
    import pymc as pm

    from placement.suggest.hyper import ELL_MU, ELL_SD, ETA_SD, ML_JITTER, SIGMA_SD

    rng = np.random.default_rng(3)
    X = rng.uniform(0, 1, (25, d))
    X[0], X[1] = 0.0, 1.0  # the data span the box: PyMC's centre is then 0.5 as well
    y = rng.normal(size=25)
    basis = hsgp.make_basis(X, m, 2.0)
    cls = {"matern52": pm.gp.cov.Matern52, "matern32": pm.gp.cov.Matern32, "expquad": pm.gp.cov.ExpQuad}[name]
    with pm.Model() as model:
        ell = pm.InverseGamma("ell", mu=ELL_MU, sigma=ELL_SD, shape=(d,))
        eta = pm.HalfNormal("eta", sigma=ETA_SD)
        sigma = pm.HalfNormal("sigma", sigma=SIGMA_SD)
        gp = pm.gp.HSGP(m=[m] * d, L=[float(v) for v in np.asarray(basis.L)], cov_func=eta**2 * cls(d, ls=ell))
        phi, sqrt_psd = gp.prior_linearized(X)
        B = phi * sqrt_psd
        pm.MvNormal("y_obs", mu=np.zeros(25), cov=B @ B.T + (sigma**2 + ML_JITTER) * np.eye(25), observed=y)
    assert np.allclose(np.asarray(gp._X_center, dtype=float), np.asarray(basis.centre))
    logp = model.compile_logp()
    st = hsgp.stats(X, basis)
    for theta in ([np.log(0.3)] * d + [0.0, np.log(0.3)], [np.log(0.15)] * d + [0.4, np.log(0.05)]):
        theta = np.asarray(theta)
        point = {"ell_log__": theta[:d], "eta_log__": theta[d], "sigma_log__": theta[d + 1]}
        ref = float(logp(point))
        got = float(hsgp.hsgp_logdensity(name, jnp.asarray(theta), st, jnp.asarray(y)))
        # the dense 25 x 25 reference (rank <= m^d plus a small noise) loses digits to round-off:
        # from 3e-8 to 2e-7 relative measured in 2-D (matern32 and matern52 alike), 1e-10 in 1-D; a wrong
        # spectral density (log_psd off by 0.01) moves the density by more than 1e-4 relative
        assert abs(got - ref) <= 1e-6 * abs(ref), (got, ref)


def _frame(n=60, seed=1):
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0, 10, n))
    return pd.DataFrame({"x": x, "y": np.sin(x) + 0.1 * rng.normal(size=n)})


SMALL = dict(num_hyper=4, num_fantasies=4, grid=64, restarts=2, steps=20, hsgp_m=40)


@pytest.mark.parametrize("sampler,criterion", [("map", "integrated_variance"), ("bayes", "expected_total_variance")])
def test_suggest_end_to_end(sampler, criterion):
    from placement.suggest import suggest

    df = _frame()
    out = suggest(df, k=3, approx="hsgp", sampler=sampler, criterion=criterion, seed=0, **SMALL)
    assert len(out) == 3 and out["x"].between(df.x.min(), df.x.max()).all()
    after, before = out[f"{criterion}_after"].iloc[0], out[f"{criterion}_before"].iloc[0]
    assert np.isfinite(after) and after < before
    assert (out["pred_sd"] > 0).all()
    # pending points lower the criterion before the batch (the mixture predictive then comes from
    # hsgp.mixture_predictive)
    again = suggest(df, k=2, approx="hsgp", sampler=sampler, criterion=criterion, seed=0,
                    pending=out[["x"]].to_numpy(), **SMALL)
    assert again[f"{criterion}_before"].iloc[0] < before  # the pending points count as measured
    assert len(again) == 2 and (again["pred_sd"] > 0).all()


@pytest.mark.parametrize("options,words", [
    (dict(kernel="periodic", period=5.0), "HSGPPeriodic"),
    (dict(kernel="ratquad"), "kernel=expquad | matern32 | matern52"),
    (dict(sampler="nuts"), "sampler=importance or map"),
    (dict(hsgp_m=0), "hsgp_m must be"),
    (dict(hsgp_c=1.0), "hsgp_c must be"),
    (dict(approx="sparse"), "approx must be exact or hsgp"),
])
def test_settings_that_cannot_work(options, words):
    from placement.suggest import SuggestConfig

    with pytest.raises(PlacementError, match=words.replace("|", r"\|")):
        SuggestConfig(**{"approx": "hsgp", **options})


def test_too_many_basis_functions_for_d():
    from placement.suggest import suggest

    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.uniform(size=(20, 4)), columns=list("abcd")).assign(y=rng.normal(size=20))
    with pytest.raises(PlacementError, match="m\\^d = 2560000 basis functions .* lower hsgp_m to 8"):
        suggest(df, k=2, approx="hsgp", hsgp_m=40)
