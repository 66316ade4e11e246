"""Every documented path of the command line works: a covering test matrix.

``placement gradient`` and ``placement run`` each run every sampler (conf/sampler/) on every
problem (seed_gp, simulator, and a user's own model with a d = 1 and a d = 2 design, see
tests/paths_models.py), with the objectives rotated Latin-square fashion so that every
sampler x objective pair appears at least once over the two commands; every experiment
preset runs once; ``placement suggest`` runs every criterion x sampler pair once; and
``placement summarize`` collects a small multirun. Each case checks exit code 0, no
traceback, and that every promised output file exists and is well formed. Then the resume
paths: more steps continue a run, a corrupt checkpoint or a changed configuration ends with
one clear ``error:`` line and exit code 2.

Speed: the CLI runs in this process (``placement.cli.main``), so imports are paid once and
identical XLA programs come from one module-wide compile cache; every setting is small.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from inprocess import Result, assert_clear_error, assert_ok, placement  # noqa: F401

HERE = Path(__file__).resolve().parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- running the CLI in this process ---------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _cli_environment(tmp_path_factory):
    """One private compile cache for the module; Python's stderr left alone (the fd-2 filter of
    placement.runtime would replace sys.stderr in this process); tests/ importable for the
    custom builders."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLACEMENT_CACHE", str(tmp_path_factory.mktemp("jaxcache")))
        mp.setenv("PLACEMENT_RAW_STDERR", "1")
        mp.syspath_prepend(str(HERE))
        yield


# -- the matrix ------------------------------------------------------------------------------
RETRY = ["retry.max_retries=0"]  # one attempt per estimate: small settings are often "untrusted"
# Small, and alike where that lets the compile cache serve several cases: importance and
# importance_run get the same numbers (pilot_iters = adapt_iters, so the adaptation loop is
# compiled once), and both kinds of sampler give 512 draws, so the estimate's programs are shared.
IS_SMALL = ["sampler.num_samples=512", "sampler.adapt_samples=512", "sampler.adapt_iters=2", "sampler.pilot_iters=2"]
NUTS_SMALL = ["sampler.num_chains=2", "sampler.num_warmup=100", "sampler.num_draws=256"]
SAMPLERS = {
    "importance": ["sampler=importance", *IS_SMALL, "sampler.max_draws=2048"],  # bounds its precision target
    "importance_run": ["sampler=importance_run", *IS_SMALL],
    "nuts": ["sampler=nuts", *NUTS_SMALL],
    "reweight": ["sampler=reweight", *NUTS_SMALL],
    "quadrature": ["sampler=quadrature", "sampler.points=9"],
    "map": ["sampler=map", "sampler.num_starts=2", "sampler.num_steps=50"],
}
PROBLEMS = {
    "seed_gp": ["problem=seed_gp"],
    "simulator": ["problem=simulator"],
    "custom_d1": ["problem=custom", "problem.builder=paths_models:build_1d", "+problem.args.domain=[0.0,1.0]",
                  "+problem.args.grid=17"],
    "custom_d2": ["problem=custom", "problem.builder=paths_models:build_2d",
                  "+problem.args.domain=[[0.0,1.0],[0.0,1.0]]", "+problem.args.grid=16"],
}
DESIGN_SHAPE = {"seed_gp": (10,), "simulator": (8,), "custom_d1": (6,), "custom_d2": (6, 2)}
OBJECTIVES = ["posterior_mean", "integrated_variance", "target_variance", "custom", "max_variance"]


def objective_args(objective: str, problem: str) -> list[str]:
    if objective != "custom":
        return [f"objective={objective}"]
    # objective=custom names any scalar Deterministic: the user's own on the custom models
    name = "my_ivar" if problem.startswith("custom") else "integrated_variance"
    return ["objective=custom", f"objective.name={name}", "objective.direction=minimize"]


SMOOTH = ["posterior_mean", "integrated_variance", "target_variance", "custom"]


def objective_for(command: str, i: int, j: int) -> str:
    """Objective of the case (sampler i, problem j). gradient: max_variance on one custom problem
    (2 + i % 2; the built-in problems' max_variance is tested apart, see below), the smooth
    objectives rotated Latin-square fashion on the others. run: the same objectives, so the run
    reuses the gradient case's compiled programs, except on that custom problem, where it takes the
    one smooth objective the sampler's gradient cases left out. So every sampler meets all five."""
    jm = 2 + i % 2
    if j == jm:
        return "max_variance" if command == "gradient" else SMOOTH[(i + jm) % 4]
    return SMOOTH[(i + j) % 4]


# matern12 last: (family + problem) % 6 == 5 only on the custom problems (see test_matern12_... below)
KERNELS = ["matern52", "matern32", "periodic", "expquad", "ratquad", "matern12"]
OPTIMIZERS = ["adam", "sgd", "momentum", "rmsprop"]
# samplers that compile the same programs (same settings below) share a kernel on each problem
FAMILY = {"importance": 0, "importance_run": 0, "nuts": 1, "reweight": 1, "quadrature": 2, "map": 3}


def kernel_for(sampler: str, j: int) -> str:
    """Kernels rotate over (sampler family, problem); gradient and run of a cell use the same."""
    return KERNELS[(FAMILY[sampler] + j) % len(KERNELS)]


def matrix(command: str) -> list:
    cases = []
    for i, sampler in enumerate(SAMPLERS):
        for j, problem in enumerate(PROBLEMS):
            if (i + j) % 2 != (command == "run"):  # half the cells per command: every pair once overall
                continue
            objective, kernel = objective_for(command, i, j), kernel_for(sampler, j)
            extra = [f"kernel={kernel}"]
            if command == "run":
                extra.append(f"optimizer={OPTIMIZERS[len(cases) % len(OPTIMIZERS)]}")
                extra += RUN_CONSTRAINTS.get((sampler, problem), [])
            cases.append(pytest.param(sampler, problem, objective, extra, id="-".join([sampler, problem, objective, *(
                a.split("=", 1)[1] for a in extra[:2])]) + ("-constraints" if len(extra) > 2 else "")))
    return cases


# README's constraint options, on two run cases (checked on the result)
RUN_CONSTRAINTS = {
    ("importance_run", "seed_gp"): ["constraints.min_spacing=0.5", "constraints.fixed=[0,9]", "constraints.max_step=0.3"],
    ("importance", "custom_d2"): ["constraints.min_spacing=0.1", "constraints.max_step=0.05"],
}


# Config options whose paths are covered by their own tests instead of the matrix (the suite's
# time): a preset of a sampler already in it, and a problem with its own CLI tests.
ELSEWHERE = {"importance_large": "tests/test_config.py::test_importance_large_preset"}
ELSEWHERE_PROBLEMS = {"hsgp": "tests/test_hsgp.py (gradient, run and custom-problem CLI calls)"}
ELSEWHERE_OBJECTIVES = {"eig": "tests/test_design_mode.py (predictive mode only)"}
PROBLEMS_BY_CONFIG = ["custom", "seed_gp", "simulator"]


def test_the_matrix_covers_every_sampler_objective_pair():
    # the suite's time allows each (sampler, problem) cell once, in gradient or in run
    cells = [(p.values[0], p.values[1]) for c in ("gradient", "run") for p in matrix(c)]
    assert sorted(cells) == sorted((s, q) for s in SAMPLERS for q in PROBLEMS)
    for c in ("gradient", "run"):
        assert {p.values[0] for p in matrix(c)} == set(SAMPLERS) and {p.values[1] for p in matrix(c)} == set(PROBLEMS)
    assert {p.values[2] for c in ("gradient", "run") for p in matrix(c)} == set(OBJECTIVES)
    assert {a for c in ("gradient", "run") for p in matrix(c) for a in p.values[3] if a.startswith("kernel=")} == {
        f"kernel={k}" for k in KERNELS}
    assert {a for p in matrix("run") for a in p.values[3] if a.startswith("optimizer=")} == {
        f"optimizer={o}" for o in OPTIMIZERS}
    assert sorted(p.stem for p in (HERE.parent / "conf" / "kernel").glob("*.yaml")) == sorted(KERNELS)
    assert sorted(p.stem for p in (HERE.parent / "conf" / "optimizer").glob("*.yaml")) == sorted(OPTIMIZERS)
    assert sorted(p.stem for p in (HERE.parent / "conf" / "sampler").glob("*.yaml")) == sorted([*SAMPLERS, *ELSEWHERE])
    assert sorted(p.stem for p in (HERE.parent / "conf" / "problem").glob("*.yaml")) == sorted([*PROBLEMS_BY_CONFIG,
                                                                                             *ELSEWHERE_PROBLEMS])
    assert sorted(p.stem for p in (HERE.parent / "conf" / "objective").glob("*.yaml")) == sorted([*OBJECTIVES,
                                                                                               *ELSEWHERE_OBJECTIVES])
    for q in PROBLEMS:  # every problem meets several objectives
        assert len({p.values[2] for c in ("gradient", "run") for p in matrix(c) if p.values[1] == q}) >= 2


# -- output checks -------------------------------------------------------------------------
def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_png(path: Path) -> None:
    assert path.is_file(), f"{path.name} missing"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000, f"{path.name} is not a PNG image"


def check_gradient_json(path: Path, shape: tuple) -> dict:
    res = json.loads(path.read_text())
    for key in ["X", "F", "F_se", "grad", "grad_se", "trusted", "warnings", "versions"]:
        assert key in res, key
    assert res["versions"]["devices"], res["versions"]  # docs/how-to/gpu.md: the devices used
    X, g, se = (np.asarray(res[k], dtype=float) for k in ("X", "grad", "grad_se"))
    assert X.shape == shape and g.shape == shape and se.shape == shape, (X.shape, g.shape, se.shape)
    assert finite(res["F"]) and finite(res["F_se"]) and res["F_se"] >= 0, (res["F"], res["F_se"])
    assert np.isfinite(X).all() and np.isfinite(g).all() and np.isfinite(se).all() and (se >= 0).all()
    assert isinstance(res["trusted"], bool) and isinstance(res["warnings"], list)
    assert all(isinstance(w, str) and w for w in res["warnings"])
    assert res["trusted"] == (not res["warnings"])
    return res


def check_run_dir(out: Path, steps: int, shape: tuple, predictive: bool, plots: bool = True) -> dict:
    from omegaconf import OmegaConf

    from placement.loop import load_checkpoint

    res = json.loads((out / "result.json").read_text())
    assert res["steps"] == steps and res["stop_reason"] == "steps", (res["steps"], res["stop_reason"])
    assert np.asarray(res["X"], dtype=float).shape == shape and np.asarray(res["X0"], dtype=float).shape == shape
    assert np.isfinite(np.asarray(res["X"], dtype=float)).all()
    assert finite(res["F"]) and finite(res["F_se"])
    with (out / "trajectory.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == list(range(steps))
    for r in rows:
        assert math.isfinite(float(r["F"])) and float(r["F_se"]) >= 0, r
    cfg = OmegaConf.load(out / "config.yaml")
    assert cfg.steps == steps
    state, fingerprint = load_checkpoint(out / "checkpoint.pkl")
    assert state.step == steps and fingerprint
    if plots:
        check_png(out / "objective.png")
        check_png(out / "points.png")
        if predictive:
            check_png(out / "predictive.png")
    else:
        assert not list(out.glob("*.png"))
    return res


# -- gradient and run over the matrix --------------------------------------------------------
@pytest.mark.parametrize("sampler,problem,objective,extra", matrix("gradient"))
def test_gradient_path(tmp_path, sampler, problem, objective, extra):
    out = tmp_path / "out"
    r = placement("gradient", f"hydra.run.dir={out}", *PROBLEMS[problem], *SAMPLERS[sampler],
                  *objective_args(objective, problem), *extra, *RETRY)
    assert_ok(r)
    assert "dF/dX" in r.out
    res = check_gradient_json(out / "gradient.json", DESIGN_SHAPE[problem])
    if sampler == "map":
        assert res["F_se"] == 0.0 and not np.any(res["grad_se"])


@pytest.mark.parametrize("sampler,problem,objective,extra", matrix("run"))
def test_run_path(tmp_path, sampler, problem, objective, extra):
    out = tmp_path / "out"
    r = placement("run", f"hydra.run.dir={out}", "steps=2", "plots=true", *PROBLEMS[problem], *SAMPLERS[sampler],
                  *objective_args(objective, problem), *extra, *RETRY)
    assert_ok(r)
    # predictive.png: 1-D designs on a problem with a domain (every problem here but d = 2)
    res = check_run_dir(out, 2, DESIGN_SHAPE[problem], predictive=problem != "custom_d2")
    X, X0 = np.asarray(res["X"], dtype=float), np.asarray(res["X0"], dtype=float)
    P, P0 = X.reshape(len(X), -1), X0.reshape(len(X0), -1)
    lo, hi = (0.0, 10.0) if problem in ("seed_gp", "simulator") else (0.0, 1.0)
    assert ((P >= lo - 1e-9) & (P <= hi + 1e-9)).all()  # the problem's domain bounds the design
    settings = dict(a.split("=", 1) for a in extra)
    if "constraints.max_step" in settings:  # steps=2: one update, so every point moved at most max_step
        assert np.linalg.norm(P - P0, axis=1).max() <= float(settings["constraints.max_step"]) + 1e-9
    if "constraints.min_spacing" in settings:
        dist = np.linalg.norm(P[:, None] - P[None], axis=-1)[np.triu_indices(len(P), 1)]
        assert dist.min() >= float(settings["constraints.min_spacing"]) * (1 - 1e-9)
    if "constraints.fixed" in settings:
        for k in json.loads(settings["constraints.fixed"]):
            assert X[k] == X0[k]


@pytest.mark.parametrize("command,problem,sampler", [("gradient", "simulator", "quadrature"),
                                                     ("run", "seed_gp", "importance_run")])
def test_max_variance_on_the_builtin_problems(tmp_path, command, problem, sampler):
    out = tmp_path / "out"
    extra = ["steps=2", "plots=false"] if command == "run" else []
    r = placement(command, f"hydra.run.dir={out}", "objective=max_variance", *PROBLEMS[problem], *SAMPLERS[sampler],
                  *extra, *RETRY)
    assert_ok(r)


def test_matern12_with_a_grid_objective_on_the_builtin_problems(tmp_path):
    out = tmp_path / "out"
    r = placement("run", f"hydra.run.dir={out}", "kernel=matern12", "steps=2", "plots=false",
                  *SAMPLERS["importance_run"], *RETRY)
    assert_ok(r)


# -- experiment presets ----------------------------------------------------------------------
PRESETS = {
    "seed_nuts_warm": NUTS_SMALL,
    "seed_posterior_mean": IS_SMALL,
    "simulator_forrester": IS_SMALL,
    "design_fixed": IS_SMALL,
    "design_simulator": IS_SMALL,
    "design_predictive": [*IS_SMALL, "problem.fantasies=2"],
}


def test_every_preset_is_tested():
    names = sorted(p.stem for p in (HERE.parent / "conf" / "experiment").glob("*.yaml"))
    assert names == sorted(PRESETS)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_runs(tmp_path, preset):
    out = tmp_path / "out"
    r = placement("run", f"experiment={preset}", f"hydra.run.dir={out}", "steps=2", *PRESETS[preset], *RETRY)
    assert_ok(r)
    shape = DESIGN_SHAPE["simulator" if preset.startswith(("simulator", "design_simulator")) else "seed_gp"]
    check_run_dir(out, 2, shape, predictive=True)


@pytest.mark.parametrize("preset,expected", [
    pytest.param("seed_nuts_warm", {"sampler._target_": "placement.nuts.NUTSConfig", "sampler.num_draws": 500,
                                    "sampler.rewarmup": 50, "objective.name": "integrated_variance", "steps": 50},
                 id="seed_nuts_warm"),
    pytest.param("seed_posterior_mean", {"objective.name": "gp_mu", "optimizer.learning_rate": 0.05,
                                         "constraints.max_step": 0.2}, id="seed_posterior_mean"),
    pytest.param("simulator_forrester", {"problem.name": "simulator", "objective.name": "integrated_variance",
                                         "optimizer.learning_rate": 0.2, "constraints.min_spacing": 0.3,
                                         "steps": 40}, id="simulator_forrester"),
])
def test_preset_values_are_applied(preset, expected):
    """The resolved config (``--cfg job``, no work done) holds every value the preset sets, and a
    command-line override still beats the preset."""
    from omegaconf import OmegaConf

    r = placement("run", f"experiment={preset}", "--cfg", "job")
    assert_ok(r)
    cfg = OmegaConf.create(r.out)
    got = {k: OmegaConf.select(cfg, k) for k in expected}
    assert got == expected
    r = placement("run", f"experiment={preset}", "steps=7", "--cfg", "job")
    assert_ok(r)
    assert OmegaConf.create(r.out).steps == 7


# -- suggest: every criterion x sampler -------------------------------------------------------
CRITERIA = ["expected_total_variance", "integrated_variance", "max_variance", "mutual_information", "ek_variance",
            "hedged_variance"]
SUGGEST_SAMPLERS = ["importance", "nuts", "map"]
SUGGEST_SMALL = ["search.restarts=2", "search.steps=20", "search.num_hyper=8", "search.num_fantasies=4",
                 "search.grid=32"]


def test_suggest_lists_are_complete():
    from placement.suggest import CRITERIA as criteria

    assert sorted(criteria) == sorted(CRITERIA)


@pytest.fixture(scope="module")
def suggest_data(tmp_path_factory):
    """d = 1 (8 points on [0, 10]) and d = 2 (10 points, columns a, b) measurement tables."""
    import pandas as pd

    folder = tmp_path_factory.mktemp("suggest_data")
    rng = np.random.default_rng(3)
    x = np.sort(rng.uniform(0, 10, 8))
    pd.DataFrame({"x": x, "y": np.sin(x)}).to_csv(folder / "d1.csv", index=False)
    A = rng.uniform(0, 1, (10, 2))
    pd.DataFrame({"a": A[:, 0], "b": A[:, 1], "y": np.sin(3 * A[:, 0]) * A[:, 1]}).to_csv(folder / "d2.csv", index=False)
    return folder


def suggest_cases():
    # d = 2 data for the map row, d = 1 for the others (one hyperparameter export per sampler)
    # every criterion with the default sampler, every other sampler with one criterion each
    pairs = [("importance", c) for c in CRITERIA] + [(s, CRITERIA[k % len(CRITERIA)])
                                                      for k, s in enumerate(SUGGEST_SAMPLERS) if s != "importance"]
    return [pytest.param(c, s, 2 if s == "map" else 1, id=f"{s}-{c}") for s, c in pairs]


@pytest.mark.parametrize("criterion,sampler,d", suggest_cases())
def test_suggest_path(tmp_path, suggest_data, criterion, sampler, d):
    import pandas as pd

    out = tmp_path / "out"
    k = 2 if d == 1 else 3
    extra = ["bounds=[[0,10]]"] if d == 1 else []
    r = placement("suggest", f"data={suggest_data / f'd{d}.csv'}", f"k={k}", f"criterion={criterion}",
                  f"sampler={sampler}", f"hydra.run.dir={out}", *extra, *SUGGEST_SMALL)
    assert_ok(r)
    df = pd.read_csv(out / "suggestions.csv")
    xcols = ["x"] if d == 1 else ["a", "b"]
    assert list(df.columns) == [*xcols, "pred_mean", "pred_sd", f"{criterion}_before", f"{criterion}_after"]
    assert len(df) == k and np.isfinite(df.to_numpy(dtype=float)).all() and (df["pred_sd"] > 0).all()
    data = pd.read_csv(suggest_data / f"d{d}.csv")
    lo, hi = ((0.0,), (10.0,)) if d == 1 else (data[xcols].min().to_numpy(), data[xcols].max().to_numpy())
    assert ((df[xcols].to_numpy() >= np.asarray(lo) - 1e-9) & (df[xcols].to_numpy() <= np.asarray(hi) + 1e-9)).all()
    res = json.loads((out / "suggest.json").read_text())
    assert res["criterion"] == criterion and np.asarray(res["suggestions"]).shape == (k, d)
    check_png(out / "suggestions.png")


# -- summarize a multirun ----------------------------------------------------------------------
def test_multirun_then_summarize(tmp_path):
    sweep = tmp_path / "sweep"
    # seeds too: every job in a folder of its own (named by its overrides, steps left out so a
    # resume with more steps finds it)
    r = placement("run", "-m", "optimizer=adam,sgd", "seed=0,1", "steps=2", "plots=false", f"hydra.sweep.dir={sweep}",
                  *SAMPLERS["importance_run"], *RETRY)
    assert_ok(r)
    assert len(list(sweep.rglob("result.json"))) == 4
    r = placement("summarize", str(sweep))
    assert_ok(r)
    text = (sweep / "summary.md").read_text()
    assert "optimizer=adam" in text and "optimizer=sgd" in text and "| run | F |" in text
    rows = json.loads((sweep / "summary.json").read_text())
    assert len(rows) == 4 and sorted(o for row in rows for o in row["run"].split() if o.startswith("optimizer=")) == [
        "optimizer=adam", "optimizer=adam", "optimizer=sgd", "optimizer=sgd"]
    for row in rows:
        assert finite(row["F"]) and finite(row["F_se"]) and row["steps"] == 2 and row["stop"] == "steps"
    check_png(sweep / "summary.png")
    r = placement("summarize", str(tmp_path / "nothing_here"))
    assert_clear_error(r, "not a folder")


def test_gradient_multirun(tmp_path):
    """README: ``placement gradient -m ...`` (a sweep); one gradient.json per job, in sweep/<job number>."""
    sweep = tmp_path / "sweep"
    r = placement("gradient", "-m", "seed=1,2", f"hydra.sweep.dir={sweep}", *SAMPLERS["importance"], *RETRY)
    assert_ok(r)
    for job in ("0", "1"):
        check_gradient_json(sweep / job / "gradient.json", DESIGN_SHAPE["seed_gp"])


@pytest.mark.parametrize("args", [["--help"], ["gradient", "--help"], ["run", "--help"], ["suggest", "--help"],
                                  ["summarize", "--help"], ["gradient", "--cfg", "job"], ["run", "--cfg", "job"],
                                  ["suggest", "data=x.csv", "--cfg", "job"]], ids=" ".join)
def test_help_and_resolved_config(args):
    r = placement(*args)
    assert_ok(r)
    assert r.out.strip()


# -- resume -----------------------------------------------------------------------------------
RESUME = ["seed=5", *SAMPLERS["importance_run"], *RETRY, "plots=false"]


def test_resume_continues_and_refuses_a_changed_config_a_fresh_start_or_a_corrupt_checkpoint(tmp_path):
    out = tmp_path / "out"
    r = placement("run", f"hydra.run.dir={out}", "steps=2", *RESUME)
    assert_ok(r)
    first = read_rows(out / "trajectory.csv")
    fresh_header = (out / "trajectory.csv").read_text().splitlines()[0]
    # more steps: continues after step 2
    r = placement("run", f"hydra.run.dir={out}", "steps=3", "resume=true", *RESUME)
    assert_ok(r)
    assert "resuming" in r.err
    res = check_run_dir(out, 3, (10,), predictive=False, plots=False)
    rows = read_rows(out / "trajectory.csv")
    assert len(rows) == 3 and rows[:2] == first  # the first two steps kept as they were
    assert res["steps"] == 3
    # the resumed table keeps the fresh run's column order (rows compare as dicts above, which
    # ignores it; once, resuming wrote its columns in another order)
    header = (out / "trajectory.csv").read_text().splitlines()[0]
    assert header.startswith("step,F,F_se,grad_norm,x0,x1,")
    assert header == fresh_header
    # a different configuration is refused, and the run's files are left alone
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.suffix != ".log"}
    for change in (["seed=6"], ["kernel=matern32"]):
        args = [a for a in RESUME if not a.startswith(change[0].split("=")[0] + "=")]
        r = placement("run", f"hydra.run.dir={out}", "steps=4", "resume=true", *args, *change)
        assert_clear_error(r, "different configuration")
        after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.suffix != ".log"}
        assert after == before
    # a new run into the same folder without resume=true is refused, and the files are left alone
    r = placement("run", f"hydra.run.dir={out}", "steps=4", *RESUME)
    assert_clear_error(r, "resume=true")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.suffix != ".log"} == before
    # garbage in checkpoint.pkl (bytes that load_checkpoint recognises today; see CORRUPT): one clear error
    (out / "checkpoint.pkl").write_bytes(CORRUPT["random_256"])
    r = placement("run", f"hydra.run.dir={out}", "steps=4", "resume=true", *RESUME)
    assert_clear_error(r, "checkpoint")
    assert (out / "result.json").exists() and read_rows(out / "trajectory.csv") == rows


def read_rows(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


# corrupt or foreign checkpoint bytes (the comments say what pickle.load raises on them)
CORRUPT = {
    "text": b"garbage bytes, not a pickle",
    "empty": b"",
    "truncated": None,  # the first half of a real checkpoint, filled in by the test
    "random_256": np.random.default_rng(0).bytes(256),
    "list": b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00]\x94(K\x01K\x02e.",
    "text_with_newline": b"garbage bytes, not a pickle\nsecond line\n",  # ValueError (opcode GET)
    "extension_code": b"\x83\x92\x1e\xd5",  # ValueError: unregistered extension code
    "frame_length": b"\x95e\xd6\xdb\xeb\x97\x83\x83\xe0",  # OverflowError
    "bad_utf8": b"\x80\x05\x8c\x01\x84\xdb\xeb\r",  # UnicodeDecodeError
    "absurd_length": b"\x8d\x8a\xe4\xf9&e\xf1\xedV",  # MemoryError, raised at once (no allocation)
    "missing_module": b"cno_such_module\nThing\n.",  # ModuleNotFoundError
    "missing_class": b"cplacement.loop\nNoSuchThing\n.",  # AttributeError
}


@pytest.mark.parametrize("name", list(CORRUPT))
def test_load_checkpoint_turns_any_corrupt_file_into_a_placement_error(tmp_path, name):
    import pickle

    from placement.errors import PlacementError
    from placement.loop import load_checkpoint

    data = CORRUPT[name]
    if data is None:
        real = pickle.dumps({"state": {"step": 1, "X": np.zeros(10)}, "fingerprint": "abc"})
        data = real[: len(real) // 2]
    path = tmp_path / "checkpoint.pkl"
    path.write_bytes(data)
    with pytest.raises(PlacementError, match="cannot read the checkpoint"):
        load_checkpoint(path)


def test_resume_from_a_checkpoint_with_unreadable_bytes_gives_one_clear_error(tmp_path):
    """End to end for the most ordinary garbage (a text file), which load_checkpoint once did
    not catch: placement run resume=true must end with one ``error:`` line and exit 2."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pkl").write_bytes(CORRUPT["text_with_newline"])
    r = placement("run", f"hydra.run.dir={out}", "steps=2", "resume=true", *RESUME)
    assert_clear_error(r, "checkpoint")
