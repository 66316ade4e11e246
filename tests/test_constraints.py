"""Projections onto the constraints (placement.constraints).

1. For random designs (1-D, d = 2, 3), bounds (none, one-sided, both), spacing, fixed subsets
   and step limits, every projection either satisfies every constraint, as judged by a
   checker written here (not ``verify``), or is X_old unchanged with a reason.
2. A feasible proposal is returned unchanged, so projecting a projection changes nothing.
3. Exact answers worked out by hand in 1-D, including the fixed-point regression.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.constraints import Constraints, check_design_in_bounds, project
from placement.errors import PlacementError

FAST = settings(max_examples=200, deadline=None)


def violations(X, X_old, c):
    """Every violated constraint, checked point by point and pair by pair."""
    n = len(X_old)
    P, Q = np.asarray(X, float).reshape(n, -1), np.asarray(X_old, float).reshape(n, -1)
    tol = 1e-9 * max(1.0, float(np.abs(P).max()), float(np.abs(Q).max()))
    lo = np.broadcast_to(-math.inf if c.lower is None else np.asarray(c.lower, float), P.shape[1:])
    hi = np.broadcast_to(math.inf if c.upper is None else np.asarray(c.upper, float), P.shape[1:])
    out = []
    for i in range(n):
        if not all(math.isfinite(v) for v in P[i]):
            out.append(f"point {i} not finite")
        for j in range(P.shape[1]):
            if not lo[j] - tol <= P[i, j] <= hi[j] + tol:
                out.append(f"point {i} out of bounds")
        if i in c.fixed and P[i].tobytes() != Q[i].tobytes():
            out.append(f"fixed point {i} moved")
        if c.max_step is not None and math.dist(P[i], Q[i]) > c.max_step + tol:
            out.append(f"point {i} moved {math.dist(P[i], Q[i])}")
        for j in range(i):
            if math.dist(P[i], P[j]) < c.min_spacing - tol:
                out.append(f"points {j}, {i} too close")
    return out


def assert_feasible_or_refused(res, X_new, X_old, c):
    assert res.X.shape == X_old.shape
    if res.refused is None:
        assert violations(res.X, X_old, c) == [], (res.X, violations(res.X, X_old, c))
    else:
        assert isinstance(res.refused, str) and res.refused.strip() and "\n" not in res.refused
        assert res.X.tobytes() == np.asarray(X_old, float).tobytes()


coord = st.one_of(st.floats(-5, 5), st.sampled_from([-1.0, 0.0, 0.5, 1.0]))  # ties and coincident points


@st.composite
def problems(draw, dims=(1, 2, 3)):
    """(X_new, X_old, Constraints) with random shape, bounds, spacing, fixed subset and max_step."""
    d = draw(st.sampled_from(dims))
    n = draw(st.integers(1, 7))
    shape = (n,) if d == 1 and draw(st.booleans()) else (n, d)

    def design():
        return np.array(draw(st.lists(coord, min_size=n * d, max_size=n * d)), float).reshape(shape)

    X_old, X_new = design(), design()
    if draw(st.booleans()):  # a small move rather than an unrelated design
        X_new = X_old + 0.3 * (X_new - X_old)
    a = draw(st.floats(-6, 2))
    b = a + draw(st.floats(0.5, 10))
    lower, upper = draw(st.sampled_from([(None, None), (a, None), (None, b), (a, b)]))
    if draw(st.booleans()):  # a starting design inside the bounds, as the start check demands
        X_old = np.clip(X_old, -np.inf if lower is None else lower, np.inf if upper is None else upper)
    c = Constraints(
        lower=lower,
        upper=upper,
        min_spacing=draw(st.one_of(st.just(0.0), st.floats(0.01, 2.0))),
        fixed=tuple(draw(st.lists(st.integers(0, n - 1), max_size=n, unique=True))),
        max_step=draw(st.one_of(st.none(), st.floats(0.05, 5.0))),
    )
    return X_new, X_old, c


@FAST
@given(problems())
def test_every_projection_satisfies_every_constraint_or_is_refused(prob):
    X_new, X_old, c = prob
    assert_feasible_or_refused(project(X_new, X_old, c), X_new, X_old, c)


@FAST
@given(problems())
def test_projecting_a_projection_changes_nothing(prob):
    X_new, X_old, c = prob
    res = project(X_new, X_old, c)
    if res.refused is None:
        again = project(res.X, X_old, c)
        assert again.refused is None and again.X.tobytes() == res.X.tobytes()


@st.composite
def feasible_1d(draw):
    """A feasible X_old in 1-D (gaps >= spacing, inside the bounds) and constraints without max_step."""
    n = draw(st.integers(1, 7))
    delta = draw(st.one_of(st.just(0.0), st.floats(0.01, 2.0)))
    gaps = [delta + draw(st.sampled_from([0.0, draw(st.floats(0, 2))])) for _ in range(n - 1)]
    x = draw(st.floats(-5, 5)) + np.concatenate([[0.0], np.cumsum(gaps)])
    x = x[np.asarray(draw(st.permutations(range(n))))]
    lower = draw(st.sampled_from([None, float(x.min()) - draw(st.floats(0, 1))]))
    upper = draw(st.sampled_from([None, float(x.max()) + draw(st.floats(0, 1))]))
    fixed = tuple(draw(st.lists(st.integers(0, n - 1), max_size=n, unique=True)))
    X_new = np.array(draw(st.lists(coord, min_size=n, max_size=n)))
    return X_new, x, Constraints(lower=lower, upper=upper, min_spacing=delta, fixed=fixed)


@FAST
@given(feasible_1d())
def test_1d_from_a_feasible_design_is_never_refused(prob):
    """In 1-D the projection is exact, so it always exists when X_old shows the set is not empty."""
    X_new, X_old, c = prob
    assert violations(X_old, X_old, c) == []
    res = project(X_new, X_old, c)
    assert res.refused is None, res.refused
    assert violations(res.X, X_old, c) == []
    assert project(X_old, X_old, c).X.tobytes() == X_old.tobytes()  # feasible: returned unchanged


@settings(max_examples=60, deadline=None)
@given(problems(dims=(1,)))
def test_1d_projection_is_nearest_among_all_orderings(prob):
    """Against a brute force: for every order of the points the feasible set is convex, and a
    general solver (SLSQP) finds its nearest point; no feasible answer it finds is nearer."""
    from itertools import permutations

    from scipy.optimize import minimize

    X_new, X_old, c = prob
    x, x_old = X_new.ravel(), X_old.ravel()
    n, c = len(x), Constraints(c.lower, c.upper, c.min_spacing, c.fixed[:2])  # no max_step
    free = [i for i in range(n) if i not in c.fixed]
    fx = list(c.fixed)
    if n > 4 or not free or (fx and violations(x_old[fx], x_old[fx], Constraints(c.lower, c.upper, c.min_spacing))):
        return  # too many orders (n! SLSQP runs), or the fixed points alone are infeasible (tested above)
    res = project(X_new, X_old, c)

    def full(v):
        z = x_old.copy()
        z[free] = v
        return z

    lo = -np.inf if c.lower is None else c.lower
    hi = np.inf if c.upper is None else c.upper
    for order in permutations(range(n)):
        cons = [{"type": "ineq", "fun": lambda v, a=a, b=b: full(v)[b] - full(v)[a] - c.min_spacing}
                for a, b in zip(order, order[1:])]
        sol = minimize(lambda v: np.sum((v - x[free]) ** 2), np.clip(x[free], lo, hi), method="SLSQP",
                       jac=lambda v: 2 * (v - x[free]), bounds=[(lo if np.isfinite(lo) else None,
                                                                 hi if np.isfinite(hi) else None)] * len(free),
                       constraints=cons, options={"ftol": 1e-12, "maxiter": 500})
        z = full(sol.x)
        if violations(z.reshape(X_old.shape), X_old, c) == []:
            assert res.refused is None, (order, z, res.refused)
            assert np.sum((res.X.ravel() - x) ** 2) <= np.sum((z - x) ** 2) + 1e-7, (order, z, res.X)


def test_spacing_holds_next_to_a_fixed_point():
    """Regression: fixed points used to be put back after spacing, giving [1.0, 1.2]."""
    res = project(np.array([2.0, 1.2]), np.array([1.0, 3.0]), Constraints(min_spacing=0.5, fixed=(0,)))
    assert res.refused is None
    np.testing.assert_array_equal(res.X, [1.0, 1.5])


def test_1d_exact_projections_worked_by_hand():
    # one segment: isotonic fit of x - k on [0.2, 0.4, 0.6] pools to -0.6, clipped to lower = 0
    res = project(np.array([0.6, 0.2, 9.8, 0.4]), np.zeros(4), Constraints(lower=0.0, upper=10.0, min_spacing=1.0))
    np.testing.assert_allclose(res.X, [2.0, 0.0, 9.8, 1.0], atol=1e-12)
    # unbounded: the cluster spreads about its mean 0.4
    res = project(np.array([0.2, 0.4, 0.6]), np.zeros(3), Constraints(min_spacing=1.0))
    np.testing.assert_allclose(res.X, [-0.6, 0.4, 1.4], atol=1e-12)
    # fixed point at 0 with room for two on its right (upper = 2.5): the cheapest split sends
    # 0.1 left (cost 1.21 + 0.64 + 2.89 = 4.74, against 6.34 for two left and 16.14 for three)
    res = project(np.array([5.0, 0.1, 0.2, 0.3]), np.array([0.0, 1, 2, 3]),
                  Constraints(upper=2.5, min_spacing=1.0, fixed=(0,)))
    np.testing.assert_allclose(res.X, [0.0, -1.0, 1.0, 2.0], atol=1e-12)
    # one-sided bound: points pressed against lower = 0 stay apart
    res = project(np.array([-3.0, -2.0, -1.0]), np.array([1.0, 2, 3]), Constraints(lower=0.0, min_spacing=0.5))
    np.testing.assert_allclose(res.X, [0.0, 0.5, 1.0], atol=1e-12)


def test_max_step_limits_each_point_on_its_own():
    res = project(np.array([3.0, 0.5, -4.0]), np.zeros(3), Constraints(max_step=1.0))
    np.testing.assert_allclose(res.X, [1.0, 0.5, -1.0])
    res = project(np.array([[3.0, 4.0], [0.1, 0.0]]), np.zeros((2, 2)) + [[0, 0], [5, 5]], Constraints(max_step=1.0))
    np.testing.assert_allclose(res.X, [[0.6, 0.8], [5 - 4.9 / math.hypot(4.9, 5), 5 - 5 / math.hypot(4.9, 5)]])


def test_max_step_shrinks_the_move_when_spacing_needs_it():
    """Two points swapping places: clipping each move would make them meet, so the whole move shrinks."""
    c = Constraints(min_spacing=1.0, max_step=1.2)
    res = project(np.array([[2.0, 0.0], [0.0, 0.0]]), np.array([[0.0, 0.0], [2.0, 0.0]]), c)
    assert res.refused is None
    np.testing.assert_allclose(res.X, [[0.5, 0.0], [1.5, 0.0]], atol=1e-9)  # |2 - 4t| >= 1: t = 1/4


def test_refused_step_keeps_x_old_and_says_why():
    X_old = np.array([0.0, 0.5, 1.0])
    res = project(np.array([0.2, 0.3, 0.4]), X_old, Constraints(lower=0.0, upper=1.0, min_spacing=0.6))
    assert res.refused and "min_spacing" in res.refused
    assert res.X.tobytes() == X_old.tobytes()
    res = project(np.array([np.nan, 0.3, 0.4]), X_old, Constraints())
    assert res.refused and "non-finite" in res.refused


def test_2d_spacing_with_a_fixed_point():
    X_old = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    X_new = np.zeros((4, 2)) + np.random.default_rng(0).normal(0, 0.01, (4, 2))
    c = Constraints(lower=-1.0, upper=1.0, min_spacing=0.3, fixed=(1,))
    res = project(X_new, X_old, c)
    assert res.refused is None and violations(res.X, X_old, c) == []


def test_start_check_rejects_fixed_points_closer_than_min_spacing():
    c = Constraints(min_spacing=0.5, fixed=(0, 2))
    with pytest.raises(PlacementError, match="fixed points 0 and 2.*min_spacing"):
        check_design_in_bounds(np.array([0.0, 1.0, 0.3]), c)
    check_design_in_bounds(np.array([0.0, 0.1, 0.6]), c)  # free points too close: the projection fixes them
    with pytest.raises(PlacementError, match="fixed points 0 and 2"):
        check_design_in_bounds(np.array([[0.0, 0.0], [1.0, 1.0], [0.3, 0.0]]), c)


def test_a_fixed_point_outside_the_bounds_by_round_off_is_kept():
    """Found by the property test above: a fixed point at -4e-258 with lower bound 0 was refused
    by project while verify (the same round-off allowance) accepts it."""
    X_old = np.array([0.0, -4.13151983e-258])
    res = project(np.array([0.3, 0.0]), X_old, Constraints(0.0, 1.0, 0.0, [1]))
    assert res.refused is None and res.X[1] == X_old[1]
    far = project(np.array([0.3, 0.0]), np.array([0.0, -1e-6]), Constraints(0.0, 1.0, 0.0, [1]))
    assert far.refused is not None and "fixed point 1" in far.refused


def test_start_check_rejects_free_points_that_cannot_fit_min_spacing_apart():
    """Ten points in [0, 10] cannot be 5 apart: refused before any step (every step would be
    refused); 1 apart they fit, and two fixed points leave the free points' room smaller."""
    x = np.linspace(0.0, 10.0, 10)
    with pytest.raises(PlacementError, match="min_spacing=5: the 10 free points do not fit"):
        check_design_in_bounds(x, Constraints(lower=0.0, upper=10.0, min_spacing=5.0))
    check_design_in_bounds(x, Constraints(lower=0.0, upper=10.0, min_spacing=1.0))
    with pytest.raises(PlacementError, match="do not fit between the bounds .* and the fixed points"):
        check_design_in_bounds(np.array([0.0, 1.0, 2.0, 3.0]), Constraints(lower=0.0, upper=3.0, min_spacing=1.2, fixed=(0, 3)))
