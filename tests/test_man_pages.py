"""Every tool ships a man page that lists every option its --help lists."""

import configparser
import re
from pathlib import Path

import pytest
from conftest import run_tool

ROOT = Path(__file__).resolve().parents[1]


def console_scripts() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return [line.split("=")[0].strip() for line in lines]


def help_text(tool: str, *sub: str) -> str:
    result = run_tool(tool, *sub, "--help")
    assert result.returncode == 0, result.stderr
    return result.stdout


def section(text: str, title: str) -> str:
    m = re.search(rf"^{title}:\n((?:[ \t]+.*\n|\n)*)", text, re.M)
    return m.group(1) if m else ""


def options(text: str) -> set[str]:
    found = set()
    for line in section(text, "Options").splitlines():
        spec = re.split(r"\s{2,}", line.strip())[0]  # the option column, before its help
        found |= set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", spec))
    return found


def subcommands(text: str) -> list[str]:
    return [line.split()[0] for line in section(text, "Commands").splitlines() if line.strip()]


@pytest.mark.parametrize("tool", console_scripts())
def test_man_page_lists_every_option_of_help(tool):
    page = ROOT / "man" / f"{tool}.1"
    assert page.exists(), f"{tool} has no man page"
    man = page.read_text().replace("\\-", "-")
    top = help_text(tool)
    assert "Example" in top, f"{tool} --help has no example"
    wanted = options(top)
    for sub in subcommands(top):
        text = help_text(tool, sub)
        wanted |= options(text)
        assert sub in man, f"subcommand {sub} missing from {page.name}"
    assert wanted, f"no options parsed from {tool} --help"
    missing = sorted(opt for opt in wanted if not re.search(rf"(?<![\w-]){opt}(?![\w-])", man))
    assert not missing, f"{page.name} lacks {missing}"
