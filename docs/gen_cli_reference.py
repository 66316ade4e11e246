"""Write docs/reference/cli.md from the config groups in conf/ (run after changing conf/):

    python docs/gen_cli_reference.py          # rewrite the page
    python docs/gen_cli_reference.py --check  # exit 1 if the page is stale (tests/test_docs.py)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
PAGE = ROOT / "docs" / "reference" / "cli.md"
COMMANDS = {"gradient": "F and dF/dX with standard errors at one design",
            "run": "relocate the design along dF/dX (the outer loop)",
            "suggest": "k new measurement locations from a CSV of observations"}
GROUPS = ["problem", "kernel", "objective", "sampler", "optimizer", "experiment", "hydra/launcher"]


def header(text: str) -> str:
    """The leading comment block of a yaml file, as one paragraph."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# @package"):
            continue
        lines.append(line[1:].strip())
    return " ".join(lines)


def defaults_of(text: str) -> list[str]:
    """The defaults list of a root config, e.g. ['problem: seed_gp', ...]."""
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith("defaults:"):
            inside = True
            continue
        if inside:
            if not line.startswith("  -"):
                break
            item = line.split("-", 1)[1].split("#")[0].strip()
            if item != "_self_":
                out.append(item)
    return out


def body(text: str) -> str:
    """A yaml file without its header comment and hydra: block."""
    lines = text.splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    if "hydra:" in lines:
        lines = lines[:lines.index("hydra:")]
    return "\n".join(lines).strip()


def page() -> str:
    out = ["# Command-line reference", "",
           "Generated from `conf/` by `python docs/gen_cli_reference.py`; do not edit by hand.", "",
           "`placement <command> [key=value ...]`. Overrides are Hydra's: `group=option` picks an option of a",
           "config group, `group.key=value` sets one of its keys, `-m` sweeps comma-separated values",
           "(`placement run -m kernel=matern32,matern52`). `placement <command> --cfg job` prints the",
           "resolved config, `placement summarize DIR` collects a sweep into one table.", ""]
    for cmd, what in COMMANDS.items():
        text = (CONF / f"{cmd}.yaml").read_text()
        out += [f"## placement {cmd}", "", f"{what}. {header(text)}", ""]
        defaults = defaults_of(text)
        if defaults:
            out += ["Default options: " + ", ".join(f"`{d.replace(': ', '=')}`" for d in defaults) + ".", ""]
        out += ["```yaml", body(text), "```", ""]
    out += ["## Config groups", ""]
    for group in GROUPS:
        files = sorted((CONF / group).glob("*.yaml"))
        out += [f"### {group}", "", "| option | what it is |", "|---|---|"]
        for f in files:
            out.append(f"| `{f.stem}` | {header(f.read_text()).replace('|', '/')} |")
        out.append("")
        for f in files:
            text = body(f.read_text())
            if text:
                out += [f"#### {group}={f.stem}", "", "```yaml", text, "```", ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str]) -> int:
    text = page()
    if "--check" in argv:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE} is stale: run python docs/gen_cli_reference.py", file=sys.stderr)
            return 1
        return 0
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
