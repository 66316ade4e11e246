"""The seed problem against deterministic quadrature (the exact answer)."""

import numpy as np
import pytest

from conftest import assert_within_se, cosine, rel_err
from exact import quadrature_answer
from placement.api import Problem, gradient
from placement.engine import Engine
from placement.importance import ISConfig
from placement.quadrature import QuadConfig

XLA_OPTIMIZED = True  # long estimates per compiled program (tests/conftest.py)


@pytest.fixture(scope="module")
def truth(seed_jm):
    F1, g1, edge1, terms = quadrature_answer(seed_jm, seed_jm.X, seed_jm.y, points=(45, 61, 61))
    F2, g2, edge2, _ = quadrature_answer(seed_jm, seed_jm.X, seed_jm.y, points=(55, 75, 75), terms=terms)
    return dict(F=F2, grad=g2, coarse=(F1, g1), edges=(edge1, edge2), terms=terms)


def test_quadrature_converged_and_box_large_enough(truth):
    F1, g1 = truth["coarse"]
    assert abs(F1 - truth["F"]) < 1e-5 * abs(truth["F"])
    assert rel_err(g1, truth["grad"]) < 1e-3
    assert max(truth["edges"]) < 1e-8, truth["edges"]
    # the values the shared notes report from an independent computation
    assert truth["F"] == pytest.approx(2.240215, abs=2e-6)
    assert np.linalg.norm(truth["grad"]) == pytest.approx(0.0646, abs=5e-4)


def test_identity_matches_finite_differences_of_F(seed_jm, truth):
    """The quadrature's identity gradient equals the derivative of the quadrature's F."""
    X, y = seed_jm.X, seed_jm.y
    pts = (31, 41, 41)
    _, g, _, _ = quadrature_answer(seed_jm, X, y, points=pts, terms=truth["terms"])
    h = 1e-4
    for i in (0, 2, 6):
        e = np.zeros_like(X)
        e[i] = h
        Fp = quadrature_answer(seed_jm, X + e, y, points=pts, terms=truth["terms"])[0]
        Fm = quadrature_answer(seed_jm, X - e, y, points=pts, terms=truth["terms"])[0]
        assert (Fp - Fm) / (2 * h) == pytest.approx(g[i], rel=1e-4, abs=1e-7)


def test_importance_default_agrees_within_its_standard_errors(seed_jm, truth):
    engine = Engine(seed_jm, ISConfig(rel_se=0.02))  # conf/sampler/importance.yaml's settings
    problem = Problem("seed_gp", seed_jm)
    errs = []
    for seed in range(4):
        est = gradient(problem, None, seed=seed, engine=engine)
        assert est.F == pytest.approx(truth["F"], abs=4 * est.F_se + 1e-6)
        # the default reaches relative SE <= 0.02 (aimed proposal + RQMC: ~0.009 in one batch)
        assert_within_se(est.grad, est.grad_se, truth["grad"], se_cap=0.03)
        assert cosine(est.grad, truth["grad"]) > 0.98
        errs.append(rel_err(est.grad, truth["grad"]))
        assert est.diagnostics["target_met"]
    assert np.median(errs) < 0.02, errs  # issue 10: 2% median relative error


# tests/exact.py's 55x75x75 grid is itself 0.8-2.1e-5 (relative L2 of dF/dX) from finer grids
# (/tmp/quad reference: 41x49x193 and 33x41x161, agreeing to 1.5e-7): REF_TOL absorbs that.
REF_TOL = 3e-5


@pytest.mark.parametrize("design", ["seed", "held_out"])
def test_quadrature_sampler_is_near_exact(seed_jm, truth, design):
    """sampler=quadrature within its SE of the exact answer (measured at the seed design:
    error 3.2e-5, SE 3.2e-4 of |dF/dX|), its SE capped at 1e-3 of |dF/dX| so an inflated
    SE fails, at the seed design and at a design nobody tuned the method on."""
    X = seed_jm.X if design == "seed" else np.sort(np.random.default_rng(7).uniform(0, 10, len(seed_jm.X)))
    if design == "seed":
        F, g = truth["F"], truth["grad"]
    else:
        F, g, edge, _ = quadrature_answer(seed_jm, X, seed_jm.y, points=(55, 75, 75), terms=truth["terms"])
        assert edge < 1e-7  # measured 2.1e-8: the reference's fixed box holds this design too
    est = gradient(Problem("seed_gp", seed_jm), QuadConfig(), X=X, seed=0)
    d = est.diagnostics
    ref = REF_TOL * np.linalg.norm(g)
    assert_within_se(est.grad, est.grad_se, g, atol=ref, se_cap=1e-3)
    assert rel_err(est.grad, g) < 1e-4
    assert abs(est.F - F) <= 4 * est.F_se + 1e-5 * abs(F) and est.F_se < 1e-4 * abs(F)
    assert d["trusted"] and d["edge_mass"] < 1e-6 and d["nonfinite_draws"] == 0, d
    assert d["points"] == (33, 33, 65) or design != "seed", d["points"]  # the allocation at the seed design


def test_integrated_variance_objective_against_quadrature():
    """A second objective of the run command, the same exact check."""
    from placement.model import from_pymc
    from placement.problems import seed_gp

    jm = from_pymc(seed_gp(), "integrated_variance")
    F, g, edge, _ = quadrature_answer(jm, jm.X, jm.y, points=(45, 61, 61))
    assert edge < 1e-8
    est = gradient(Problem("seed_gp", jm), ISConfig(), seed=1)
    assert est.F == pytest.approx(F, abs=4 * est.F_se + 1e-8)
    assert_within_se(est.grad, est.grad_se, g, atol=1e-6, se_cap=0.05)  # measured 0.024
    assert cosine(est.grad, g) > 0.98


def test_aimed_proposal_cuts_the_gradient_variance_and_stays_honest(seed_jm, truth):
    """Same draws, same RQMC: the aimed proposal's relative SE is at most half the
    posterior-fit proposal's (measured: about 0.9% vs 4-5% at 16,384 draws), and both
    estimates are right within their SEs."""
    problem = Problem("seed_gp", seed_jm)
    out = {}
    for aim in (True, False):
        cfg = ISConfig(aim=aim, rel_se=0.0)
        est = gradient(problem, cfg, seed=4, engine=Engine(seed_jm, cfg))
        assert_within_se(est.grad, est.grad_se, truth["grad"], se_cap=0.02 if aim else 0.12)
        out[aim] = est.diagnostics["rel_se"]
    assert out[True] < 0.5 * out[False], out
