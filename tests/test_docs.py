"""The documentation builds with mkdocs --strict (no broken links or references), the CLI
reference covers every config option, and the README stays short and about the software."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = ["python3 -m venv .venv && .venv/bin/pip install -e '.[cpu]' && .venv/bin/placement gradient",
         "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest -q"]
HISTORY = re.compile(r"falls? short|issue|not yet built|closing notes|target asks", re.IGNORECASE)


def user_facing_text():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "examples").glob("*.py"))]
    return {f.relative_to(ROOT).as_posix(): f.read_text() for f in files}


def test_readme_is_short_and_starts_with_the_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) < 10_000
    code = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert code[0].strip().splitlines() == SETUP


def test_user_facing_text_does_not_speak_of_development_history():
    found = {name: HISTORY.findall(text) for name, text in user_facing_text().items()}
    assert not {k: v for k, v in found.items() if v}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={"NO_MKDOCS_2_WARNING": "1",
                                                                             "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_the_site_builds_strict_with_every_page(site):
    for page in ["index.html", "concepts/identity/index.html", "benchmarks/index.html", "reference/api/index.html",
                 "reference/cli/index.html", "figures/seed_gradient.png"]:
        assert (site / page).exists(), page
    api = (site / "reference/api/index.html").read_text()
    for name in ["placement.api.gradient", "placement.api.relocate", "to_inference_data", "ISConfig"]:
        assert name in api, name


def test_the_cli_reference_lists_every_option_of_every_group(site):
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_cli_reference as gen
    finally:
        sys.path.pop(0)
    page = gen.page()
    cli = (site / "reference/cli/index.html").read_text()
    for group in gen.GROUPS:
        for f in (ROOT / "conf" / group).glob("*.yaml"):
            assert f"`{f.stem}`" in page and f"{group}={f.stem}" in cli, f"{group}={f.stem}"
    assert "num_samples" in cli and "min_spacing" in cli
