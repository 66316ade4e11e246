"""The outer loop: exact resume, constraints, simulator gradients, and real progress."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_within_se, cosine
from conjugate import build, closed_form_F
from placement.constraints import Constraints
from placement.engine import Engine
from placement.importance import ISConfig
from placement.loop import LoopConfig, best_visited, initial_state, load_checkpoint, outer_step, run_loop, save_checkpoint
from placement.model import from_pymc
from placement.optim import make_optimizer
from placement.problems import SIMULATORS
from placement.simulate import with_simulator

XLA_OPTIMIZED = True  # many steps per compiled program (tests/conftest.py)


@pytest.fixture(scope="module")
def conj_engine():
    jm = from_pymc(build(), "f")
    return Engine(jm, ISConfig(num_samples=4096, adapt_samples=2048))


def test_resume_from_checkpoint_is_bit_identical(conj_engine, tmp_path):
    opt = make_optimizer("adam", 0.05)
    cons = Constraints(lower=-3.0, upper=3.0)
    cfg = LoopConfig(steps=5, direction="minimize")
    full = run_loop(conj_engine, initial_state(conj_engine, conj_engine.jm.X, opt, 7), opt, cons, cfg)
    st = initial_state(conj_engine, conj_engine.jm.X, opt, 7)
    for _ in range(2):
        st = outer_step(conj_engine, st, opt, cons, cfg)
    save_checkpoint(tmp_path / "c.pkl", st, "fp")
    st2, fp = load_checkpoint(tmp_path / "c.pkl")
    assert fp == "fp"
    resumed = run_loop(conj_engine, st2, opt, cons, cfg)
    np.testing.assert_array_equal(resumed.X, full.X)
    assert [r["F"] for r in resumed.rows] == [r["F"] for r in full.rows]
    assert resumed.step == 5 and resumed.stop_reason == "steps"


def test_loop_reduces_the_objective_beyond_its_error(conj_engine):
    # f = mean(phi w) + 0.3 |w|^2: minimising moves points to shrink posterior variance
    opt = make_optimizer("adam", 0.1)
    st = run_loop(conj_engine, initial_state(conj_engine, conj_engine.jm.X, opt, 0), opt,
                  Constraints(lower=-3.0, upper=3.0), LoopConfig(steps=12, direction="minimize"))
    first, last = st.rows[0], st.rows[-1]
    assert last["F"] < first["F"] - 4 * np.hypot(first["F_se"], last["F_se"])
    assert np.all(st.X >= -3.0) and np.all(st.X <= 3.0)


def test_best_visited_is_a_design_the_loop_estimated_and_its_exact_F_agrees(conj_engine):
    """The best trusted step's design is the one its F was estimated at: the conjugate model's
    closed form at that design lies within the step's SE, and no trusted step's F is lower."""
    opt = make_optimizer("adam", 0.3)
    st = run_loop(conj_engine, initial_state(conj_engine, conj_engine.jm.X, opt, 1), opt,
                  Constraints(lower=-3.0, upper=3.0), LoopConfig(steps=10, direction="minimize"))
    best = best_visited(st.rows, "minimize", np.shape(st.X))
    assert best["F"] == min(r["F"] for r in st.rows) and best["X"].shape == np.shape(st.X)
    exact = float(closed_form_F(jnp.asarray(best["X"]), jnp.asarray(conj_engine.jm.y), 1.0, 0.5, 0.3))
    assert abs(best["F"] - exact) <= 4 * best["F_se"] + 1e-9, (best, exact)
    assert best["F_se"] <= 0.05 * abs(exact)  # an SE cap, so the check above cannot pass on a wide SE


def test_best_visited_picks_by_direction_skips_untrusted_steps_and_measures_the_gap():
    def row(step, F, se, x, trusted=1):
        return {"step": step, "F": F, "F_se": se, "x0_0": x, "x0_1": -x, "x1_0": 2 * x, "x1_1": 0.0,
                "grad_norm": 1.0, "trusted": trusted}

    rows = [row(0, 3.0, 0.1, 0.0), row(1, 1.0, 0.1, 1.0, trusted=0), row(2, 2.0, 0.3, 2.0), row(3, 2.5, 0.4, 3.0)]
    low = best_visited(rows, "minimize", (2, 2))
    assert low["step"] == 2 and low["F"] == 2.0  # step 1 was untrusted: its F is not an answer
    np.testing.assert_array_equal(low["X"], [[2.0, -2.0], [4.0, 0.0]])
    assert low["se_gap"] == pytest.approx(0.5 / 0.5)  # (2.5 - 2.0) / hypot(0.3, 0.4)
    high = best_visited(rows, "maximize", (2, 2))
    assert high["step"] == 0 and high["se_gap"] == pytest.approx(0.5 / np.hypot(0.1, 0.4))
    assert best_visited(rows[:1], "minimize", (2, 2))["se_gap"] == 0.0
    assert best_visited([*rows, row(4, 9.0, 0.1, 4.0, trusted=0)], "minimize", (2, 2))["se_gap"] == low["se_gap"]
    exact = [row(0, 1.0, 0.0, 0.0), row(1, 1.0 + 1e-12, 0.0, 1.0)]  # MAP: no SE, any worse is worse
    assert best_visited(exact, "minimize", (2, 2))["se_gap"] == np.inf
    scrambled = {f"x{i}": float(i) for i in (10, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9)}  # an old checkpoint's key order
    got = best_visited([{"step": 0, "F": 1.0, "F_se": 0.1, **scrambled}], "minimize", (11,))
    np.testing.assert_array_equal(got["X"], np.arange(11.0))
    assert best_visited([row(0, 1.0, 0.1, 0.0, trusted=0)], "minimize", (2, 2)) is None


def test_stopping_rules(conj_engine):
    opt = make_optimizer("sgd", 1e-9)  # X barely moves: F stalls
    st = run_loop(conj_engine, initial_state(conj_engine, conj_engine.jm.X, opt, 0), opt, Constraints(),
                  LoopConfig(steps=30, patience=2))
    assert st.stop_reason == "patience" and st.step < 30
    st = run_loop(conj_engine, initial_state(conj_engine, conj_engine.jm.X, opt, 0), opt, Constraints(),
                  LoopConfig(steps=30, grad_tol=1e6))
    assert st.stop_reason == "grad_tol" and st.step == 1


def test_simulator_gradient_includes_dy_dX():
    """y = 3 sin(X) + 0.5 e re-measured at X: the identity must match d/dX F(X, y(X))."""
    jm0 = from_pymc(build(), "f")
    e = np.random.default_rng(3).normal(size=len(jm0.X))
    jm = with_simulator(jm0, "sin", 0.5, e)
    X = jnp.asarray(jm0.X) + 0.1
    total = jax.grad(lambda X: closed_form_F(X, SIMULATORS["sin"](X) + 0.5 * e, 1.0, 0.5, 0.3))(X)
    partial = jax.grad(lambda X: closed_form_F(X, SIMULATORS["sin"](jnp.asarray(jm0.X) + 0.1) + 0.5 * e, 1.0, 0.5, 0.3))(X)
    assert np.linalg.norm(total - partial) > 0.1 * np.linalg.norm(total)  # dy/dX matters here
    eng = Engine(jm, ISConfig(num_samples=16384))
    st = eng.init(jax.random.PRNGKey(0), X, jm.y_at(X))
    _, est = eng.gradient(jax.random.PRNGKey(1), st, X, jm.y_at(X))
    assert_within_se(est.grad, est.grad_se, np.asarray(total), atol=1e-6, se_cap=0.03)  # measured 0.012
    assert cosine(est.grad, total) > 0.98


def test_reweight_reuses_draws_for_small_moves_and_stays_within_its_errors():
    from conjugate import closed_form
    from placement.reweight import ReweightConfig

    jm = from_pymc(build(), "f")
    eng = Engine(jm, ReweightConfig(num_warmup=300, num_draws=2000, min_ess_fraction=0.3))
    X = np.asarray(jm.X)
    st = eng.init(jax.random.PRNGKey(0), X, jm.y)
    st, est0 = eng.gradient(jax.random.PRNGKey(1), st, X, jm.y)
    assert est0.diagnostics["nuts_ran"]
    X1 = X + 0.02
    st, est1 = eng.gradient(jax.random.PRNGKey(2), st, X1, jm.y)
    assert not est1.diagnostics["nuts_ran"] and est1.diagnostics["reweight_ess_fraction"] > 0.3
    F1, g1 = closed_form(X1, jm.y)
    assert est1.F == pytest.approx(F1, abs=4 * est1.F_se + 1e-6)
    assert_within_se(est1.grad, est1.grad_se, g1, atol=1e-6, se_cap=0.25)  # measured 0.12 (reused, reweighted NUTS draws)
    st, est2 = eng.gradient(jax.random.PRNGKey(3), st, X + 1.5, jm.y)  # a big move: weights collapse
    assert est2.diagnostics["nuts_ran"]


def test_progress_prints_plain_lines_when_stderr_is_not_a_terminal(capsys):
    """placement.relocate's progress in a log or batch job: a line at the first step, then at
    most every ``interval`` seconds, and at the last step, no tqdm bar (carriage returns); off when
    disabled."""
    from types import SimpleNamespace

    from placement.loop import Progress

    state = SimpleNamespace(rows=[dict(F=0.5, F_se=0.01, grad_norm=0.2, step_seconds=0.1)])
    bar = Progress(3, enabled=True, desc="placement.relocate", interval=0.0)
    for _ in range(3):
        bar(state)
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err and err.count("placement.relocate: ") == 3 and "3/3 steps, F=0.5+-0.01" in err
    quiet = Progress(3, enabled=True, interval=3600.0)
    for _ in range(3):
        quiet(state)
    err = capsys.readouterr().err
    assert err.count("placement run: ") == 2 and "1/3 steps" in err and "3/3 steps" in err  # first and last
    off = Progress(3, enabled=False)
    off(state)
    assert capsys.readouterr().err == ""


def test_progress_lines_name_what_is_counted():
    """A reporter with a unit puts it after the count; one without (suggest: several stages)
    lets each note name its own, without an empty unit and a stray comma."""
    import io

    from placement.progress import Reporter

    out = io.StringIO()
    Reporter("gradient", "draws", "lines", delay=0.0, interval=0.0, stream=out)(4096, 8192, "relative SE 0.02")
    Reporter("suggest", "", "lines", delay=0.0, interval=0.0, stream=out)(256, 4096, "hyperparameter draws")
    lines = [ln.rsplit(" (", 1)[0] for ln in out.getvalue().splitlines()]
    assert lines == ["gradient: 4096/8192 draws, relative SE 0.02", "suggest: 256/4096 hyperparameter draws"], lines
