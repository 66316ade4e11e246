"""Long work (issue 15): Ctrl-C and SIGTERM stop a command mid-work with the documented exit code
and no output folder; a time budget returns the best result so far marked cut short (or an error
when nothing usable exists); memory is planned from the compiled program before anything runs.

Signals are tested in real processes (each pays the imports and loads its programs from the
compile cache, ~10 s of CPU for suggest, more for gradient); everything else runs in process on
small problems."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from placement import budget, memory
from placement.errors import PlacementError
from placement.suggest import search, suggest
from inprocess import default_sigint

SMALL = dict(k=2, bounds=[[0, 10]], restarts=8, num_hyper=4, num_fantasies=4, grid=32, progress="off")


def _frame(n=12, seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 10, n)
    return pd.DataFrame({"x": x, "y": np.sin(x) + 0.1 * rng.normal(size=n)})


# -- in process ------------------------------------------------------------------------------------
def test_chunked_search_equals_one_call(monkeypatch):
    """Splitting the steps into many compiled calls (signals and the budget act between them)
    is the same computation as one call per phase."""
    monkeypatch.setattr(search, "CALL_SECONDS", 1e9)
    whole = suggest(_frame(), steps=60, **SMALL)
    monkeypatch.setattr(search, "CALL_SECONDS", 0.0)  # one step per call
    chunked = suggest(_frame(), steps=60, **SMALL)
    np.testing.assert_array_equal(whole.values, chunked.values)
    assert whole.attrs["cut_short"] is None and chunked.attrs["cut_short"] is None


def test_time_budget_returns_the_best_batch_so_far_marked_cut_short():
    t0 = time.perf_counter()
    out = suggest(_frame(), steps=10**7, max_seconds=0.5, **SMALL)  # 10^7 steps: hours without the budget
    assert time.perf_counter() - t0 < 30
    assert out.attrs["cut_short"] == "max_seconds"
    assert np.isfinite(out["x"]).all() and ((out["x"] >= 0) & (out["x"] <= 10)).all()


def test_budget_settings_and_nesting():
    assert budget.check_seconds(0) == math.inf and budget.check_seconds(None) == math.inf
    with pytest.raises(PlacementError, match="max_seconds"):
        budget.check_seconds(-1)
    with budget.scope(100):
        with budget.scope(1000) as inner:  # an inner scope never extends the outer one
            assert inner.max_seconds <= 100
    with budget.scope(0.001):  # an inner scope under a spent outer budget names the outer setting
        time.sleep(0.01)
        with budget.scope(None), budget.scope(60):
            assert budget.current().max_seconds == 0.001 and budget.current().passed()
            assert "max_seconds=0.001 ran out" in str(budget.nothing_yet(budget.current().max_seconds, "x"))
    with budget.scope(1e-9), pytest.raises(budget.OutOfTime):
        time.sleep(0.001)
        budget.checkpoint()
    assert "max_seconds=2 ran out before the first estimate" in str(budget.nothing_yet(2, "the first estimate"))


def test_memory_too_small_is_one_clear_error_before_any_work(monkeypatch):
    from placement.suggest import hyper

    monkeypatch.setattr(hyper, "hyper_draws", lambda *a, **k: pytest.fail("planning must come first"))
    with pytest.raises(PlacementError) as e:
        suggest(_frame(), steps=20, max_memory=1000, **SMALL)
    msg = str(e.value)
    assert "hyperparameter posterior (n=12 points" in msg and "max_memory allows 1 kB" in msg, msg
    assert "fewer data points" in msg and "raise max_memory" in msg


def test_memory_plan_names_the_first_stage_that_cannot_fit():
    """Each stage of a suggest request (hyperparameter posterior, criterion data resident
    during the search, the search beside them) is refused with its own size and remedy,
    before anything runs; the planned bytes are the sizes the messages name."""
    from placement.suggest import criteria
    from placement.suggest.config import SuggestConfig
    from placement.suggest.kernel import for_bounds

    kernel = for_bounds("matern52", np.array([[0.0, 10.0]]), 2.0, None)
    crit = criteria.criterion("expected_total_variance")
    opts = {k: v for k, v in SMALL.items() if k != "bounds"}
    cfg = lambda mem, **kw: SuggestConfig(max_memory=mem, **{**opts, **kw})  # noqa: E731
    plan = search.plan_request(cfg("100GB"), 12, 0, 1, kernel, crit)
    hyper_b, crit_b, search_b = plan["hyperparameters"], plan["criterion_data"], plan["search"]
    assert hyper_b == 8 * search.hyper_matrices(1) * 144
    # the criterion data: 4 draws x (144 + 12 + 2 x 12 x 32 + 2 x 32) numbers and the fantasies, inputs, grid
    data = 8 * (4 * (144 + 12 + 2 * 12 * 32 + 2 * 32) + 4 * 3 + 12 * 1 + 4 * 12 + 32 + 4 * 2)
    assert crit_b == data + 8 * search.factor_matrices(1) * 144
    with pytest.raises(PlacementError, match=rf"posterior \(n=12 points in 1 inputs.*needs {memory.human(hyper_b)}"):
        search.plan_request(cfg(hyper_b - 1), 12, 0, 1, kernel, crit)
    big = search.plan_request(cfg("100GB", num_hyper=64), 12, 0, 1, kernel, crit)["criterion_data"]
    assert big > hyper_b
    with pytest.raises(PlacementError, match=rf"criterion data \(n=12 points, 64 hyperparameter draws.* need "
                                             rf"{memory.human(big)}.*Lower search.num_hyper"):
        search.plan_request(cfg(big - 1, num_hyper=64), 12, 0, 1, kernel, crit)
    assert search_b > data and plan["search_group"] == 2
    with pytest.raises(PlacementError, match=r"the batch search \(n=12 points.*one start at a time, beside"):
        search.plan_request(cfg(max(hyper_b, crit_b)), 12, 0, 1, kernel, crit)


def test_memory_bounds_cover_what_xla_plans():
    """The planned bytes of the work before the search are at least what XLA's buffer
    assignment gives for those compiled programs (the hyperparameter score on all the data,
    four log densities at a time, the factorisation), and not far above it."""
    import jax
    import jax.numpy as jnp

    from placement.suggest import criteria, hyper
    from placement.suggest.kernel import as_kernel

    S = lambda *s: jax.ShapeDtypeStruct(s, jnp.float64)  # noqa: E731
    n, d, M, g = 300, 2, 8, 64
    kernel = as_kernel("matern52")
    score, logp, _ = hyper._closed_tools(kernel)
    prior = ()
    if hasattr(hyper, "fixed_prior"):  # priors as runtime arrays
        prior = (jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.float64), hyper.fixed_prior(d)),)
    xla_score = memory.compiled_bytes(score.lower(S(d + 2), S(n, d), S(n), *prior).compile())
    xla_logp = memory.compiled_bytes(logp.lower(S(d + 2), S(n, d), S(n), *prior).compile())
    bound = 8 * search.hyper_matrices(d) * n * n
    assert max(xla_score, 4 * xla_logp) <= bound <= 2.5 * xla_score, (xla_score, xla_logp, bound)
    fact = criteria._factoriser(kernel).lower(S(n, d), S(g, d), S(M, n), S(M, d), S(M), S(M)).compile()
    shapes = search.crit_shapes(n, d, M, M, 2, g)
    planned = search._nbytes(shapes) + 8 * search.factor_matrices(d) * n * n
    assert memory.compiled_bytes(fact) <= planned <= 1.5 * memory.compiled_bytes(fact) + search._nbytes(shapes)


def test_memory_between_one_and_all_starts_searches_fewer_at_once():
    """max_memory below what the preferred group of starts needs: the search runs fewer starts
    at once and returns what the unconstrained search returns."""
    kw = SMALL  # restarts=8: keep = 2 starts at once
    free = suggest(_frame(), steps=40, **kw)
    need = free.attrs["info"]["search_bytes"]
    assert free.attrs["info"]["search_group"] == 2 and need > 0
    plan = free.attrs["info"]["memory"]
    data = plan["search"] - need  # the criterion data, resident beside the search
    mem = data + int(0.75 * need)
    assert mem > max(plan["hyperparameters"], plan["criterion_data"])  # the stages before the search fit
    tight = suggest(_frame(), steps=40, max_memory=mem, **kw)
    assert tight.attrs["info"]["search_group"] == 1 and tight.attrs["info"]["search_bytes"] <= 0.75 * need
    np.testing.assert_allclose(tight.values, free.values, rtol=1e-6, atol=1e-9)


def test_memory_settings():
    assert memory.limit("2GB") == 2_000_000_000 and memory.limit("512MiB") == 512 * 2**20
    assert 0 < memory.limit(0.5) <= memory.available()
    with pytest.raises(PlacementError, match="max_memory"):
        memory.limit("lots")
    err = memory.oom_error(RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 32834203928 bytes."),
                           "the batch search", "Use sampler=map.")
    assert memory.is_oom(RuntimeError("RESOURCE_EXHAUSTED: x")) and "32.8 GB" in str(err)


@pytest.fixture(scope="module")
def seed_problem():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from placement.api import build_problem

    conf = os.path.join(os.path.dirname(__file__), "..", "conf")
    return build_problem(OmegaConf.load(os.path.join(conf, "problem", "seed_gp.yaml")),
                         instantiate(OmegaConf.load(os.path.join(conf, "kernel", "matern52.yaml"))), "gp_mu")


def test_memory_forcing_a_smaller_batch_gives_the_same_terms(seed_problem):
    """max_memory below what the preferred batch of draws needs: the gradient's terms run fewer
    draws at once and are the same numbers, bit for bit (the estimate is a function of them)."""
    from placement import estimator, memory

    jm = seed_problem.jm
    default = estimator.plan(jm)
    X, y = np.asarray(jm.X), np.asarray(jm.y)
    # the default plan fits by its traced bound alone (no compile); XLA's figure for that call:
    need = memory.compiled_bytes(estimator._compiled(jm, default.batch, default.chunk, X, y), X.nbytes + y.nbytes)
    assert default.bytes is None and need < default.limit // 2
    with memory.scope(need // 2):
        small = estimator.shared_terms(jm)
    assert small.plan.batch < default.batch and small.plan.bytes <= need // 2
    assert small.plan.chunk == default.chunk
    theta = np.asarray(jm.initial_point) + 0.3 * np.random.default_rng(3).normal(size=(default.chunk, jm.ndim))
    for a, b in zip(estimator.shared_terms(jm)(theta, X, y), small(theta, X, y)):
        np.testing.assert_array_equal(a, b)


def test_gradient_api_budget_and_memory_settings(seed_problem):
    import placement

    small = dict(num_samples=2048, adapt_samples=64, pilot_iters=1, aim=False, rel_se=0.0, gradient_check="off")
    with pytest.raises(PlacementError, match="max_seconds=1e-09 ran out before the sampler's first fit"):
        placement.gradient(seed_problem, max_seconds=1e-9, **small)  # the posterior fit checks between chunks
    with pytest.raises(PlacementError, match=r"the gradient's terms \(n=10 points.*max_memory allows 1 kB"):
        placement.gradient(seed_problem, max_memory=1000, **small)
    with pytest.raises(PlacementError, match="max_memory"):  # checked before anything is built
        placement.relocate(seed_problem, steps=1, max_memory="lots")


def test_gradient_progress_counts_the_extra_draws_of_a_precision_target(seed_problem):
    """Past the first estimate the progress counts every draw made, of the number the target
    needs (not each batch's own 2048 of 2048), and ends at the draws the estimate used."""
    import placement

    small = dict(num_samples=2048, rel_se=0.004, max_draws=16384, gradient_check="off")  # one attempt, extended
    seen = []
    with budget.scope(progress=lambda done, total, note: seen.append((done, total))):
        est = placement.gradient(seed_problem, **small)
    n = est.diagnostics["num_draws"]
    assert n > 2048, n  # the target needed more draws than the first batch
    later = [(d, t) for d, t in seen if t > 2048]
    assert later and later[-1][0] == n, (n, seen)
    assert all(d <= t for d, t in seen), str(seen)


def test_gradient_cli_memory_too_small_stops_before_sampling_with_one_error(tmp_path):
    from inprocess import placement

    os.environ.setdefault("PLACEMENT_CACHE", str(tmp_path.parent / "jaxcache"))
    out = tmp_path / "out"
    r = placement("gradient", "max_memory=1000", f"hydra.run.dir={out}")
    assert r.code == 2, r.show()
    assert "error: the gradient's terms (n=10 points" in r.err and "max_memory allows 1 kB" in r.err, r.show()
    assert "raise max_memory" in r.err and "Traceback" not in r.err, r.show()
    assert not out.exists()


def test_hyperparameter_draws_in_chunks_equal_one_call(monkeypatch):
    """The suggest hyperparameter draws' log densities in calls of 4 draws (signals and the
    budget act between them) are the same computation as one call per round."""
    from placement.suggest import hyper

    whole = suggest(_frame(), steps=20, **SMALL)
    monkeypatch.setattr(hyper, "HYPER_WORK", 1.0)  # 4 draws per call
    assert hyper.round_chunk(12, 256) == 4
    chunked = suggest(_frame(), steps=20, **SMALL)
    for a, b in zip(whole.attrs["info"]["hyper"], chunked.attrs["info"]["hyper"]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(whole.values, chunked.values)


# -- real processes -----------------------------------------------------------------------------------
def _start(args, tmp_path):
    env = dict(os.environ, PLACEMENT_CACHE=str(tmp_path.parent / "jaxcache"))
    return subprocess.Popen([sys.executable, "-m", "placement.cli", *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint)



def _signal_mid_work(p, sig, prefix):
    """Wait for the first progress line (the work is under way, in its chunked loop), send sig;
    return (seconds from the signal to the exit, stderr)."""
    seen = []
    for line in p.stderr:
        seen.append(line)
        if line.startswith(prefix):
            break
    else:
        p.wait()
        raise AssertionError("no progress line before the command ended:\n" + "".join(seen)[-3000:])
    t = time.perf_counter()
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    return time.perf_counter() - t, "".join(seen) + err


# Interrupt latency on a loaded 2-core machine is the chunk in flight (~0.5 s of wall time for
# the search) plus the interpreter's exit; the bound leaves room for other processes' load.
LATENCY = 8.0


# Each command with one signal and each signal once (a real process costs ~17 s of the suite): both
# signals reach the same recorded-stop path (budget.stop_handler); what differs is the exit code.
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143)])
def test_suggest_stops_on_a_signal_mid_search_and_leaves_no_folder(tmp_path, sig, code):
    _frame(30).to_csv(tmp_path / "d.csv", index=False)
    out = tmp_path / "out"
    p = _start(["suggest", "data=d.csv", "k=3", "search.steps=10000000", "search.restarts=4", "search.num_hyper=4",
                "search.num_fantasies=4", "search.grid=32", f"hydra.run.dir={out}"], tmp_path)
    seconds, err = _signal_mid_work(p, sig, "suggest:")
    assert p.returncode == code, err[-3000:]
    assert seconds < LATENCY, (seconds, err[-2000:])
    assert "Traceback" not in err and "nothing was written" in err, err[-3000:]
    assert not out.exists()


# an unreachable precision target keeps the sampler drawing batch after batch
ENDLESS_GRADIENT = ["gradient", "sampler.num_samples=2048", "sampler.adapt_samples=1024", "sampler.pilot_iters=4",
                    "sampler.rel_se=1e-9", "sampler.max_draws=1000000000"]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130)])
def test_gradient_stops_on_a_signal_mid_work_and_leaves_no_folder(tmp_path, sig, code):
    out = tmp_path / "out"
    p = _start([*ENDLESS_GRADIENT, f"hydra.run.dir={out}"], tmp_path)
    seconds, err = _signal_mid_work(p, sig, "gradient:")
    assert p.returncode == code, err[-3000:]
    assert seconds < LATENCY, (seconds, err[-2000:])
    assert "Traceback" not in err and "nothing was written" in err, err[-3000:]
    assert not out.exists()


def test_suggest_cli_time_budget_marks_the_result_cut_short(tmp_path):
    from inprocess import placement

    os.environ.setdefault("PLACEMENT_CACHE", str(tmp_path.parent / "jaxcache"))
    _frame().to_csv(tmp_path / "d.csv", index=False)  # the shapes of the tests above: their compilations serve
    out = tmp_path / "out"
    r = placement("suggest", f"data={tmp_path / 'd.csv'}", "k=2", "search.steps=10000000", "search.restarts=8",
                  "search.num_hyper=4", "search.num_fantasies=4", "search.grid=32", "max_seconds=1",
                  f"hydra.run.dir={out}")
    assert r.code == 0, r.show()
    assert "cut short by max_seconds" in r.err
    assert json.loads((out / "suggest.json").read_text())["cut_short"] == "max_seconds"


def test_gradient_cli_time_budget_cuts_the_extra_draws_and_marks_the_result(tmp_path):
    """max_seconds after the first estimate: exit 0, the estimate from the draws made by then,
    cut_short in gradient.json, progress lines with the precision reached (stderr is a pipe);
    a budget spent before the first estimate: exit 2, one error line, no folder."""
    out = tmp_path / "out"
    t = time.perf_counter()
    p = _start([*ENDLESS_GRADIENT, "max_seconds=12", f"hydra.run.dir={out}"], tmp_path)
    _, err = p.communicate(timeout=300)
    seconds = time.perf_counter() - t
    assert p.returncode == 0, err[-3000:]
    assert "cut short by max_seconds=12" in err and "relative SE" in err, err[-3000:]
    res = json.loads((out / "gradient.json").read_text())
    assert res["cut_short"] == "max_seconds" and np.all(np.isfinite(res["grad"])) and res["diagnostics"]["num_draws"] > 2048
    assert seconds < 12 + 60, seconds  # the budget plus start-up (imports, compile cache) on a loaded machine
    out2 = tmp_path / "out2"
    p = _start([*ENDLESS_GRADIENT, "max_seconds=0.001", f"hydra.run.dir={out2}"], tmp_path)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2, err[-3000:]
    assert "error: max_seconds=0.001 ran out before" in err and "Traceback" not in err, err[-3000:]
    assert not out2.exists()


def test_run_time_budget_is_per_step_and_marks_each_cut_step(tmp_path):
    """run's max_seconds is each step's budget: with an unreachable precision target every
    step's extra draws are cut and the step is marked in trajectory.csv. The first step's
    budget also covers compiling its first estimate, so it is not a few seconds."""
    from inprocess import placement

    os.environ.setdefault("PLACEMENT_CACHE", str(tmp_path.parent / "jaxcache"))
    out = tmp_path / "out"
    t = time.perf_counter()
    r = placement("run", "steps=2", "sampler.rel_se=1e-9", "sampler.max_draws=1000000000", "max_seconds=15",
                  "plots=false", f"hydra.run.dir={out}")
    assert r.code == 0, r.show()
    traj = pd.read_csv(out / "trajectory.csv")
    assert len(traj) >= 2 and (traj["cut_short"].iloc[-2:] == "max_seconds").all(), traj
    assert time.perf_counter() - t < 2 * 15 + 90  # two budgets plus building the problem


@pytest.mark.parametrize("n", [10, 80])
def test_traced_memory_bound_is_above_what_xla_plans(n):
    """plan() skips XLA's memory analysis when the traced bound (every intermediate of one
    draw's terms, none reused) fits: that bound must be above XLA's own figure for the call."""
    import jax.numpy as jnp

    from placement import estimator, memory
    from placement.model import from_pymc
    from placement.problems import seed_gp

    jm = from_pymc(seed_gp(n=n), "integrated_variance")
    X, y = jnp.asarray(jm.X), jnp.asarray(jm.y)
    per_draw = memory.per_item_bound(estimator._one_terms(jm), jnp.asarray(jm.initial_point), X, y)
    for batch, rows in [(1, 8), (8, 64)]:
        need = memory.compiled_bytes(estimator._compiled(jm, batch, rows, X, y), X.nbytes + y.nbytes)
        bound = batch * per_draw + rows * 8 * (jm.ndim + 2 + 2 * int(X.size))
        assert need <= bound < 50 * need, (n, batch, need, bound)


def test_criterion_data_factorised_in_chunks_equals_one_call(monkeypatch):
    """Large n: the per-draw factorisations run in several compiled calls (signals and the time
    budget act between them); the arrays equal one call's, bit for bit, padding dropped."""
    from placement import budget
    from placement.suggest import criteria
    from placement.suggest.config import SuggestConfig
    from placement.suggest.kernel import for_bounds

    rng = np.random.default_rng(0)
    n, d, M = 30, 2, 10
    X, y, G = rng.uniform(size=(n, d)), rng.normal(size=n), rng.uniform(size=(16, d))
    c = SuggestConfig()
    kernel = for_bounds("matern52", np.array([[0.0, 1.0]] * d), c.alpha, c.period)
    hyper = (rng.uniform(0.2, 0.5, (M, d)), rng.uniform(0.5, 2.0, M), rng.uniform(0.05, 0.2, M))
    z = criteria.fantasy_normals(4, M, 3, 0)
    whole = criteria.crit_data(X, y, G, hyper, z, kernel)
    monkeypatch.setattr(criteria, "FACTOR_WORK", 4.5 * n**3)  # 4 draws per call: calls of 4, 4, 4 (2 padded)
    seen = []
    with budget.scope(progress=lambda done, total, note: seen.append((done, total))):
        parts = criteria.crit_data(X, y, G, hyper, z, kernel)
    assert seen == [(4, M), (8, M), (10, M)]
    for a, b in zip(whole, parts):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_stop_request_dropped_by_python_is_raised_at_the_next_checkpoint(monkeypatch):
    """A KeyboardInterrupt raised inside a garbage-collector callback (where JAX's
    _xla_gc_callback runs) is printed and dropped by Python; the handler also records it, and
    the next checkpoint raises it, so the work stops anyway. Outside a budget scope nothing is
    recorded, and leaving the scope forgets a request that was acted on; one dropped after the
    last checkpoint is raised on leaving the scope."""
    import gc
    import signal as sig

    from placement import budget

    def in_gc(phase, info):
        if phase == "start":
            os.kill(os.getpid(), sig.SIGINT)
            time.sleep(0.05)  # the handler runs here, inside the callback

    reported = []  # Python's "Exception ignored ... Traceback" reports: none for a recorded request
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    before = sig.signal(sig.SIGINT, sig.default_int_handler)  # as in a terminal or a notebook (an xdist worker may differ)
    try:
        with budget.scope():
            assert sig.getsignal(sig.SIGINT) is budget._on_sigint
            gc.callbacks.append(in_gc)
            try:
                gc.collect()  # the KeyboardInterrupt is raised in in_gc and dropped ("Exception ignored")
            finally:
                gc.callbacks.remove(in_gc)
            with pytest.raises(KeyboardInterrupt):
                budget.checkpoint(1, 2, "after the lost interrupt")
        assert sig.getsignal(sig.SIGINT) is sig.default_int_handler
        budget.checkpoint(1, 2, "a new scope-less call: nothing pending")
        # dropped after the last checkpoint: the scope raises it on leaving
        with pytest.raises(KeyboardInterrupt):
            with budget.scope():
                gc.callbacks.append(in_gc)
                try:
                    gc.collect()
                finally:
                    gc.callbacks.remove(in_gc)
        assert sig.getsignal(sig.SIGINT) is sig.default_int_handler and not budget._PENDING
        assert reported == []
    finally:
        sig.signal(sig.SIGINT, before)
