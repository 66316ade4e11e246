"""No silent wrong number: with deliberately poor sampler settings, every estimate is either
within 4 reported standard errors of the exact answer or marked untrusted with advice.

The trust rule under test is ``placement.retry.diagnose``, the one rule behind
``placement gradient``, ``placement run`` and the Python API; retries are switched off so
the poor settings themselves are judged.
"""

import numpy as np
import pytest

from conjugate import build, closed_form
from placement.api import Problem, gradient
from placement.engine import Engine
from placement.importance import ISConfig
from placement.model import from_pymc
from placement.quadrature import QuadConfig
from placement.retry import RetryConfig
from placement.nuts import NUTSConfig
from placement.reweight import ReweightConfig

POOR = {
    "importance_tiny": ISConfig(num_samples=64, adapt_samples=64, adapt_iters=0, pilot_iters=1),
    "importance_narrow": ISConfig(num_samples=512, adapt_samples=256, adapt_iters=0, pilot_iters=0, pilot_scale=0.05,
                                  scales=(1.0,), mix=(1.0,), df=30.0),
    "nuts_short": NUTSConfig(num_chains=2, num_warmup=15, num_draws=25),
    "reweight_short": ReweightConfig(num_chains=2, num_warmup=15, num_draws=25),
    "quadrature_narrow": QuadConfig(points=9, drop=1.0, offsets=0.0),  # a box ~1.4 sds wide
}
ADVICE = ("raise", "use sampler", "tighten", "placement.kernels")


@pytest.fixture(scope="module")
def conj():
    jm = from_pymc(build(), "f")
    F, g = closed_form(jm.X, jm.y)
    return Problem("conjugate", jm), F, g


@pytest.mark.parametrize("name", list(POOR))
def test_poor_settings_are_right_within_4_se_or_flagged(conj, name):
    problem, F, g = conj
    cfg = POOR[name]
    engine = Engine(problem.jm, cfg)
    outcomes = []
    for seed in range(6):
        est = gradient(problem, cfg, seed=seed, engine=engine, retry=RetryConfig(max_retries=0))
        d = est.diagnostics
        err = np.abs(np.append(est.grad.ravel() - g, est.F - F))
        se = np.append(est.grad_se.ravel(), est.F_se)
        covered = bool(np.all(np.isfinite(err)) and np.all(err <= 4 * se + 1e-9))
        if d["trusted"]:
            assert covered, f"{name} seed {seed}: trusted but off by {np.max(err / se):.1f} SE"
        else:
            assert d["warnings"] and all(any(a in w for a in ADVICE) for w in d["warnings"]), d["warnings"]
        outcomes.append((d["trusted"], covered))
    # the settings are poor enough that the rule has something to judge
    assert any(not t for t, _ in outcomes) or all(c for _, c in outcomes)
