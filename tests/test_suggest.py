"""Batch suggestions: the criteria's algebra, the CLI outputs, and clear errors."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import placement  # noqa: F401
from inprocess import assert_clear_error
from placement import gpjax
from placement.kernels import KERNELS
from placement.suggest import grid_points, make_criterion, suggest


@pytest.mark.parametrize("name", ["matern12", "matern32", "matern52", "expquad", "ratquad"])
def test_jax_kernels_match_the_pymc_kernels(name):
    X = np.random.default_rng(0).uniform(0, 2, (5, 2))
    ls = np.array([0.7, 1.3])
    ours = np.asarray(gpjax.kernel_matrix(name, jnp.asarray(X), jnp.asarray(X), jnp.asarray(ls), 1.5))
    ref = 1.5**2 * KERNELS[name](2, ls=ls)(X).eval()
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def _setup(M, seed=0):
    rng = np.random.default_rng(seed)
    Xn = rng.uniform(0, 1, (6, 1))
    yn = np.sin(6 * Xn[:, 0])
    hyper = (rng.uniform(0.2, 0.4, (M, 1)), rng.uniform(0.8, 1.2, M), rng.uniform(0.05, 0.2, M))
    z = jnp.asarray(rng.normal(size=(8, 2)))
    return Xn, yn, grid_points(1, 64), hyper, z


JITTER = 1e-9  # the diagonal jitter the criteria add to sigma^2


def _matern52(A, B, ls, eta):
    r = np.sqrt((((A[:, None, :] - B[None, :, :]) / ls) ** 2).sum(-1))
    return eta**2 * (1 + np.sqrt(5) * r + 5 / 3 * r**2) * np.exp(-np.sqrt(5) * r)


def _gp(X, Y, G, ls, eta, sigma):
    """Posterior mean (g, J) of f at G for each column of Y (n, J), and its variance (g,), from
    noisy observations Y at X: plain NumPy, written independently of placement.gpjax."""
    K = _matern52(X, X, ls, eta) + (sigma**2 + JITTER) * np.eye(len(X))
    Kg = _matern52(X, G, ls, eta)
    return Kg.T @ np.linalg.solve(K, Y), eta**2 - np.einsum("ig,ig->g", Kg, np.linalg.solve(K, Kg))


def _etv_numpy(Xn, yn, G, hyper, z, B):
    """expected_total_variance by its definition: the total variance at G after each fantasy
    (J,) and the mixture mean at G after each fantasy (J, g); the criterion is their mean.

    Draw m is one of M equally likely hyperparameter settings. Fantasy j is drawn from the
    predictive of noisy observations at B under draw j mod M; given it, draw m has weight
    proportional to that predictive density under m; the total variance at G is the
    weighted mean of the per-draw variances plus the weighted variance of the per-draw means.
    """
    ell, eta, sigma = hyper
    M, (J, k) = len(eta), z.shape
    mu, L = [], []  # predictive of the batch's observations under each draw
    for m in range(M):
        Kxx = _matern52(Xn, Xn, ell[m], eta[m]) + (sigma[m] ** 2 + JITTER) * np.eye(len(Xn))
        Kxb = _matern52(Xn, B, ell[m], eta[m])
        mu.append(Kxb.T @ np.linalg.solve(Kxx, yn))
        C = _matern52(B, B, ell[m], eta[m]) - Kxb.T @ np.linalg.solve(Kxx, Kxb) + (sigma[m] ** 2 + JITTER) * np.eye(k)
        L.append(np.linalg.cholesky(C))
    fant = np.stack([mu[j % M] + L[j % M] @ z[j] for j in range(J)])  # (J, k)
    logw = np.empty((M, J))
    for m in range(M):
        r = np.linalg.solve(L[m], (fant - mu[m]).T)
        logw[m] = -0.5 * np.sum(r * r, axis=0) - np.sum(np.log(np.diag(L[m])))
    W = np.exp(logw - logw.max(0))
    W /= W.sum(0)  # (M, J)
    Y = np.vstack([np.repeat(yn[:, None], J, axis=1), fant.T])  # (n + k, J)
    post = [_gp(np.vstack([Xn, B]), Y, G, ell[m], eta[m], sigma[m]) for m in range(M)]
    means = np.stack([p[0] for p in post])  # (M, g, J)
    vars_ = np.stack([p[1] for p in post])  # (M, g)
    mix = np.einsum("mj,mgj->gj", W, means)
    total = np.einsum("mj,mg->gj", W, vars_) + np.einsum("mj,mgj->gj", W, means**2) - mix**2
    return total.mean(0), mix.T


def _now_numpy(Xn, yn, G, hyper):
    """Mean at G of each draw (M, g), and the domain-averaged variance of the equal mixture."""
    ell, eta, sigma = hyper
    post = [_gp(Xn, yn[:, None], G, ell[m], eta[m], sigma[m]) for m in range(len(eta))]
    means = np.stack([p[0][:, 0] for p in post])
    vars_ = np.stack([p[1] for p in post])
    return means, float(np.mean(vars_.mean(0) + means.var(0)))


def test_one_hyperparameter_draw_matches_the_closed_form_variance_after_the_batch():
    """M = 1: both criteria equal the closed-form GP variance averaged over G, without and
    with the batch's noisy observations (neither depends on the observed values)."""
    Xn, yn, G, hyper, z = _setup(M=1)
    ell, eta, sigma = (h[0] for h in hyper)
    B = np.array([[0.1], [0.8]])
    now = np.mean(_gp(Xn, yn[:, None], G, ell, eta, sigma)[1])
    after = np.mean(_gp(np.vstack([Xn, B]), np.zeros((8, 1)), G, ell, eta, sigma)[1])
    assert after < 0.9 * now  # the batch matters, so a criterion ignoring it fails below
    for kind in ("expected_total_variance", "integrated_variance"):
        crit, current = make_criterion(kind, "matern52", Xn, yn, G, hyper, z)
        assert float(crit(jnp.asarray(B))) == pytest.approx(after, rel=1e-8), kind
        assert float(current()) == pytest.approx(now, rel=1e-8), kind


def test_expected_total_variance_matches_its_definition_and_the_law_of_total_variance():
    """M = 8 draws: the criterion equals an independent NumPy evaluation of its definition
    with the same fantasies, and that definition obeys the law of total variance: the current
    total variance equals the expected total variance after the batch plus the variance, over
    fantasies, of the mixture mean. Checked over J = 4000 fantasies (stratified, 500 per draw)
    within 4 Monte Carlo standard errors (treating the batch as noise-free is ~18 SE off)."""
    Xn, yn, G, hyper, _ = _setup(M=8)
    M, J = 8, 4000
    z = np.random.default_rng(1).normal(size=(J, 2))
    B = np.array([[0.1], [0.8]])
    etv, etv_now = make_criterion("expected_total_variance", "matern52", Xn, yn, G, hyper, z)
    totals, mixmeans = _etv_numpy(Xn, yn, G, hyper, z, B)
    means_now, now = _now_numpy(Xn, yn, G, hyper)
    assert float(etv(jnp.asarray(B))) == pytest.approx(totals.mean(), rel=1e-8)
    assert float(etv_now()) == pytest.approx(now, rel=1e-8)
    # law of total variance, one term per fantasy: E[total after + (mixture mean - mean now)^2] = now
    d = totals + np.mean((mixmeans - means_now.mean(0)) ** 2, axis=1)
    strata = d.reshape(-1, M)  # column m: the fantasies drawn under draw m
    se = np.sqrt(np.sum(strata.var(0, ddof=1) / strata.shape[0])) / M
    assert abs(d.mean() - now) < 4 * se, (d.mean(), now, se)
    # the gradient the search uses is the derivative of this value
    Bj = jnp.asarray(B)
    g = np.asarray(jax.grad(etv)(Bj))
    h = 1e-6
    fd = [(float(etv(Bj + h * e)) - float(etv(Bj - h * e))) / (2 * h) for e in jnp.eye(2)[:, :, None]]
    np.testing.assert_allclose(g.ravel(), fd, rtol=1e-4, atol=1e-8)


# -- the rank-k updates against a full refactorisation -----------------------------------
def _full_post(X, y, G, B, Y, l, e, s):
    """Reference: refactorise the whole (n + k) covariance (what the criteria did before the
    rank-k updates): mean at G for each column of Y (n + k, J), variance at G."""
    Xa = jnp.concatenate([X, B])
    K = gpjax.kernel_matrix("matern52", Xa, Xa, l, e) + (s**2 + JITTER) * jnp.eye(Xa.shape[0])
    L = jnp.linalg.cholesky(K)
    Kg = gpjax.kernel_matrix("matern52", Xa, G, l, e)
    A = jax.scipy.linalg.solve_triangular(L, Kg, lower=True)
    return Kg.T @ jax.scipy.linalg.cho_solve((L, True), Y), jnp.maximum(e**2 - jnp.sum(A * A, 0), 1e-12)


def _full_batch(X, y, B, l, e, s):
    K = gpjax.kernel_matrix("matern52", X, X, l, e) + (s**2 + JITTER) * jnp.eye(X.shape[0])
    L = jnp.linalg.cholesky(K)
    Kb = gpjax.kernel_matrix("matern52", X, B, l, e)
    A = jax.scipy.linalg.solve_triangular(L, Kb, lower=True)
    C = gpjax.kernel_matrix("matern52", B, B, l, e) - A.T @ A + (s**2 + JITTER) * jnp.eye(B.shape[0])
    return Kb.T @ jax.scipy.linalg.cho_solve((L, True), y), C


def _reference(kind, X, y, G, hyper, z, B):
    ell, eta, sigma = (jnp.asarray(h) for h in hyper)
    M, (J, k) = eta.shape[0], z.shape
    mu, C = jax.vmap(lambda l, e, s: _full_batch(X, y, B, l, e, s))(ell, eta, sigma)
    if kind == "mutual_information":
        return -0.5 * jnp.mean(jax.vmap(lambda C, s: jnp.linalg.slogdet(C / (s**2 + JITTER))[1])(C, sigma))
    if kind != "expected_total_variance":
        Y = jnp.concatenate([y, jnp.zeros(k)])[:, None]
        var = jax.vmap(lambda l, e, s: _full_post(X, y, G, B, Y, l, e, s)[1])(ell, eta, sigma).mean(0)
        return jnp.mean(var) if kind == "integrated_variance" else jnp.max(var)
    src = jnp.arange(J) % M
    fant = mu[src] + jnp.einsum("jab,jb->ja", jnp.linalg.cholesky(C[src]), z)
    ll = jax.vmap(lambda m, C: jax.vmap(lambda f: gpjax.mvn_logpdf(f, m, C))(fant))(mu, C)
    W = jax.nn.softmax(ll - jnp.log(M), axis=0)
    Y = jnp.concatenate([jnp.broadcast_to(y[:, None], (y.shape[0], J)), fant.T])
    mean, var = jax.vmap(lambda l, e, s: _full_post(X, y, G, B, Y, l, e, s))(ell, eta, sigma)
    m = jnp.einsum("mj,mgj->gj", W, mean)
    return jnp.mean(jnp.einsum("mj,mg->gj", W, var) + jnp.einsum("mj,mgj->gj", W, mean**2) - m**2)


@pytest.mark.parametrize("kind", ["expected_total_variance", "integrated_variance", "max_variance", "mutual_information"])
def test_rank_k_updates_match_a_full_refactorisation(kind):
    """Each criterion, scored from the factorisation of the data in hand by rank-k updates,
    equals the same criterion computed by refactorising the whole (n + k) covariance, in
    value (1e-8 relative) and in gradient with respect to the batch, at random batches."""
    rng = np.random.default_rng(5)
    n, d, k, M = 30, 2, 3, 4
    X = rng.uniform(0, 1, (n, d))
    y = np.sin(4 * X[:, 0]) + X[:, 1] ** 2 + 0.05 * rng.normal(size=n)
    y = (y - y.mean()) / y.std()
    hyper = (rng.uniform(0.15, 0.5, (M, d)), rng.uniform(0.8, 1.3, M), rng.uniform(0.02, 0.2, M))
    G, z = grid_points(d, 32), rng.normal(size=(6, k))
    crit, _ = make_criterion(kind, "matern52", X, y, G, hyper, z)
    ref = jax.jit(lambda B: _reference(kind, jnp.asarray(X), jnp.asarray(y), jnp.asarray(G), hyper, jnp.asarray(z), B))
    for _ in range(3):
        B = jnp.asarray(rng.uniform(0, 1, (k, d)))
        assert float(crit(B)) == pytest.approx(float(ref(B)), rel=1e-8)
        np.testing.assert_allclose(np.asarray(jax.grad(crit)(B)), np.asarray(jax.grad(ref)(B)), rtol=1e-6, atol=1e-10)


# hyper_logdensity against the PyMC model, and its closed-form score against autodiff:
# tests/test_suggest_prior.py::test_prior_density_matches_the_pymc_model (every prior).


@pytest.mark.parametrize("subset", [None, 24])
def test_newton_mode_matches_the_laplace_fit(monkeypatch, subset):
    """hyper_mode (Newton with the closed-form observed information, on a subset first when
    the data exceed SUBSET points) lands on the mode and curvature that make_laplace
    (L-BFGS from four starts, autodiff Hessian) finds on all the data."""
    import placement.suggest as S
    import placement.suggest.hyper as H
    from placement.laplace import make_laplace

    if subset:
        monkeypatch.setattr(H, "SUBSET", subset)
    rng = np.random.default_rng(8)
    X = rng.uniform(0, 1, (40, 2))
    y = np.sin(4 * X[:, 0]) + X[:, 1] ** 2 + 0.1 * rng.normal(size=40)
    y = (y - y.mean()) / y.std()
    mode, cov, lp = S.hyper_mode(X, y, "matern52", seed=0)
    lap = make_laplace(functools.partial(S.hyper_logdensity, "matern52"))(
        jax.random.PRNGKey(0), jnp.asarray(H._initial_theta(2)), jnp.asarray(X), jnp.asarray(y))
    assert lp == pytest.approx(float(lap.logp), abs=1e-8)
    np.testing.assert_allclose(mode, np.asarray(lap.mode), atol=1e-5)
    np.testing.assert_allclose(cov, np.asarray(lap.cov), rtol=1e-4, atol=1e-8)


def test_batch_mixture_from_the_factorisation_matches_the_mixture_predictive():
    from placement.suggest import batch_mixture, crit_data, mixture_predictive

    rng = np.random.default_rng(9)
    n, d, k, M = 25, 2, 4, 3
    X, y = rng.uniform(0, 1, (n, d)), rng.normal(size=n)
    hyper = (rng.uniform(0.15, 0.5, (M, d)), rng.uniform(0.8, 1.3, M), rng.uniform(0.02, 0.2, M))
    B = rng.uniform(0, 1, (k, d))
    data = crit_data(X, y, grid_points(d, 16), hyper, rng.normal(size=(2, k)))
    for a, b in zip(batch_mixture("matern52", data, B), mixture_predictive("matern52", X, y, B, hyper)):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)


def test_python_api_returns_a_batch_inside_the_bounds():
    rng = np.random.default_rng(1)
    x = np.sort(rng.uniform(0, 10, 7))
    df = pd.DataFrame({"x": x, "y": np.sin(x)})
    out = suggest(df, k=3, bounds=[[0, 10]], restarts=2, steps=40, num_hyper=8, num_fantasies=4, grid=64)
    assert list(out.columns[:3]) == ["x", "pred_mean", "pred_sd"]
    assert len(out) == 3 and out["x"].between(0, 10).all()
    assert len(np.unique(np.round(out["x"], 3))) == 3  # a batch, not one point three times
    assert (out["expected_total_variance_after"] < out["expected_total_variance_before"]).all()


@pytest.fixture
def in_process_cli(tmp_path, monkeypatch):
    """``placement suggest ARGS`` run in this process (tests/inprocess.py): the command's own
    path from the parsed overrides to the files and the exit code, without paying a new
    process's imports; test_cli.py runs real processes, errors included."""
    from inprocess import placement

    monkeypatch.setenv("PLACEMENT_CACHE", str(tmp_path.parent / "jaxcache"))
    monkeypatch.setenv("PLACEMENT_RAW_STDERR", "1")  # placement.runtime's fd-2 filter would replace sys.stderr
    return lambda args: placement("suggest", *args)


FAST = ["search.restarts=2", "search.steps=40", "search.num_hyper=8", "search.num_fantasies=4", "search.grid=64"]


def test_cli_suggest_2d(tmp_path, in_process_cli):
    rng = np.random.default_rng(2)
    X = rng.uniform(0, 1, (9, 2))
    pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "y": np.cos(3 * X[:, 0]) + X[:, 1]}).to_csv(tmp_path / "d.csv", index=False)
    out = tmp_path / "out"
    r = in_process_cli([f"data={tmp_path / 'd.csv'}", "k=2", f"hydra.run.dir={out}", *FAST])
    assert r.code == 0 and "Traceback" not in r.err, r.show()
    s = pd.read_csv(out / "suggestions.csv")
    assert list(s.columns[:4]) == ["a", "b", "pred_mean", "pred_sd"] and len(s) == 2
    assert ((s[["a", "b"]] >= X.min(0) - 1e-9) & (s[["a", "b"]] <= X.max(0) + 1e-9)).all().all()
    assert (out / "suggestions.png").exists() and json.loads((out / "suggest.json").read_text())["criterion"]


BAD = [
    ("missing.csv", None, [], "does not exist"),
    ("d.csv", "x,z\n1,2\n3,4\n", [], "no column 'y'"),
    ("d.csv", "x,y\n1,2\n,4\n3,5\n", [], "NaN, empty or infinite"),
    ("d.csv", "x,y\n1,2\n1,4\n3,5\n", [], "duplicate input rows"),
    ("d.csv", "x,y\n1,2\n", [], "at least two"),
    ("d.csv", "x,y\n1,2\n2,3\n3,5\n", ["k=0"], "k must be a whole number >= 1 (the number of points to suggest); got 0."),
    ("d.csv", "x,y\n1,2\n2,3\n3,5\n", ["bounds=[[3,1]]"], "lo < hi"),
    ("d.csv", "x,y\n1,2\n2,3\n3,5\n", ["bounds=[[1.5,3]]"], "outside the given bounds"),
    ("d.csv", "x,y\n1,2\n2,3\n3,5\n", ["x_columns=[q]"], "lacks input columns"),
    ("d.csv", "x,y\n1,a\n2,3\n3,5\n", [], "numbers only"),
    ("d.csv", "", [], "cannot read"),
    ("d.csv", "x,y\n1,2\n2,3\n3,5\n", ["criterion=best"], "unknown criterion"),
    ("d.csv", "x,site,y\n1,a,2\n2,b,3\n3,c,5\n", [], r"\['site'\] hold text"),  # the column at fault named
]


def _preflight(path, extra):
    """The checks the CLI runs before any work, called in process with the same overrides."""
    import yaml

    from placement.suggest import SuggestConfig, prepare, read_table

    kw = {k: yaml.safe_load(v) for k, v in (e.split("=", 1) for e in extra)}
    X, y, _ = read_table(path, kw.pop("x_columns", None), kw.pop("y_column", "y"))
    prepare(X, y, kw.pop("bounds", None), SuggestConfig(**kw))


@pytest.mark.parametrize("fname,content,extra,message", BAD)
def test_suggest_bad_input_is_caught_before_any_work(tmp_path, fname, content, extra, message):
    from placement.errors import PlacementError

    if content is not None:
        (tmp_path / fname).write_text(content)
    with pytest.raises(PlacementError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _preflight(tmp_path / fname, extra)


@pytest.mark.parametrize("fname,content,extra,message", [BAD[0], BAD[2], BAD[5], BAD[7]])
def test_cli_suggest_bad_input(tmp_path, in_process_cli, fname, content, extra, message):
    if content is not None:
        (tmp_path / fname).write_text(content)
    out = tmp_path / "outputs" / "suggest" / "run"
    r = in_process_cli([f"data={tmp_path / fname}", f"hydra.run.dir={out}", *FAST, *extra])
    assert_clear_error(r, message)
    assert not (tmp_path / "outputs").exists()  # nor the folders Hydra made above the run folder


def test_cli_bad_input_keeps_folders_that_existed_and_removes_those_made_for_it(tmp_path, in_process_cli):
    """A run folder that existed before (holding only the user's .log files, which look like
    Hydra's) is kept with its files; folders made through ${now:...} levels are removed."""
    data = tmp_path / "d.csv"
    data.write_text("x,y\n1,2\n2,3\n3,5\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "mine.log").write_text("the user's")
    assert_clear_error(in_process_cli([f"data={data}", f"hydra.run.dir={logs}", *FAST, "k=0"]), "k must be")
    assert (logs / "mine.log").read_text() == "the user's"
    nested = f"hydra.run.dir={tmp_path / 'o'}/${{now:%Y-%m-%d}}/${{now:%H-%M-%S}}"
    assert_clear_error(in_process_cli([f"data={data}", nested, *FAST, "k=0"]), "k must be")
    assert not (tmp_path / "o").exists()


def test_map_mode_suggests_from_one_hyperparameter_setting():
    rng = np.random.default_rng(3)
    x = np.sort(rng.uniform(0, 10, 7))
    out = suggest(pd.DataFrame({"x": x, "y": np.sin(x)}), k=2, bounds=[[0, 10]], sampler="map",
                  restarts=2, steps=40, num_fantasies=4, grid=64)
    ell, eta, sigma = out.attrs["info"]["hyper"]
    assert ell.shape == (1, 1) and len(out) == 2 and out["x"].between(0, 10).all()


def test_nuts_hyperparameters_agree_with_importance_sampling():
    """sampler=nuts draws the same hyperparameter posterior as the default importance sampler:
    the mixture predictive on a grid agrees within Monte Carlo noise."""
    from placement.suggest import hyper_draws, mixture_predictive

    rng = np.random.default_rng(4)
    Xn = np.sort(rng.uniform(0, 1, (8, 1)), axis=0)
    yn = np.sin(6 * Xn[:, 0])
    yn = (yn - yn.mean()) / yn.std()
    G = np.linspace(0, 1, 50)[:, None]
    preds = {}
    for s in ("bayes", "nuts"):
        ell, eta, sigma, ess = hyper_draws(Xn, yn, "matern52", 64, 0, s)
        assert ell.shape == (64, 1) and ess > 50
        preds[s] = mixture_predictive("matern52", Xn, yn, G, (ell, eta, sigma))
    np.testing.assert_allclose(preds["nuts"][0], preds["bayes"][0], atol=0.1)
    np.testing.assert_allclose(preds["nuts"][1], preds["bayes"][1], atol=0.1, rtol=0.25)
