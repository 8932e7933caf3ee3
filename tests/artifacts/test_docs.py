"""The documentation stays true to the code.

- Every relative link in ``docs/*.md`` and ``README.md`` points at a file that exists,
  and every ``#fragment`` at a heading of that file (GitHub's anchor rules).
- ``docs/reference.md`` is what ``docs/gen_api.py`` generates from the docstrings now,
  and names every public name.
- Every ```` ```python ```` block of the guide pages compiles; the ones marked
  ``<!-- docs-test: run -->`` are complete programs and run to a clean exit in a
  subprocess, with ``$REDIS_URL`` pointing at a fresh embedded Redis; the ones marked
  ``<!-- docs-test: pytest -->`` are test modules and pass under pytest.
- ``docs/operations.md`` explains every statistics field and names every logger.

Sync tests: the programs bring their own event loops. Nothing here sleeps or times
anything; a subprocess that hangs fails on its generous timeout.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

import layercache
import layercache.testing
from layercache.testing import EmbeddedRedis

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MARKDOWN = sorted([*DOCS.glob("*.md"), ROOT / "README.md"])
GUIDES = [DOCS / "getting-started.md", DOCS / "concepts.md"]
MARKER = re.compile(r"^<!--\s*docs-test:\s*(\w+)\s*-->$")
SUBPROCESS_TIMEOUT = 120


@dataclass(frozen=True)
class Block:
    """A fenced code block of a Markdown page."""

    page: Path
    line: int
    language: str
    code: str
    marker: str | None

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    blocks = []
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = re.match(r"^(`{3,})\s*([\w+-]*)", lines[index])
        if not opening:
            index += 1
            continue
        fence, language = opening.groups()
        start = index
        index += 1
        body = []
        while index < len(lines) and not lines[index].startswith(fence):
            body.append(lines[index])
            index += 1
        index += 1  # the closing fence
        previous = next((line for line in reversed(lines[:start]) if line.strip()), "")
        marked = MARKER.match(previous.strip())
        blocks.append(
            Block(page, start + 1, language, "\n".join(body) + "\n", marked and marked.group(1))
        )
    return blocks


def python_blocks(pages: list[Path], marker: str | None = None) -> list[Block]:
    found = [
        block for page in pages for block in code_blocks(page) if block.language in ("python", "py")
    ]
    return [block for block in found if marker is None or block.marker == marker]


# -- links -----------------------------------------------------------------------------


def prose(page: Path) -> str:
    """The page without its code blocks and code spans (links there are not links)."""
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"^(`{3,}).*?^\1", "", text, flags=re.DOTALL | re.MULTILINE)
    return re.sub(r"`[^`\n]*`", "", text)


def links(page: Path) -> list[str]:
    text = prose(page)
    inline = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    defined = re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?\s*$", text, flags=re.MULTILINE)
    return [*inline, *defined]


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings (and explicit ``id=``s)."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose_keeping_spans(page), re.M):
        slug = github_slug(heading)
        count = counts.get(slug, 0)
        counts[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    found.update(re.findall(r"""<a\s+(?:name|id)=["']([^"']+)["']""", page.read_text()))
    return found


def prose_keeping_spans(page: Path) -> str:
    text = page.read_text(encoding="utf-8")
    return re.sub(r"^(`{3,}).*?^\1", "", text, flags=re.DOTALL | re.MULTILINE)


def github_slug(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda page: page.name)
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path_part, _, fragment = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
            continue
        if fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{fragment} in {resolved.name}")
    assert not broken, f"broken links in {page.name}:\n" + "\n".join(broken)


def test_the_docs_index_lists_every_page() -> None:
    index = DOCS / "index.md"
    linked = {(DOCS / target.partition("#")[0]).resolve() for target in links(index)}
    missing = [p.name for p in DOCS.glob("*.md") if p != index and p.resolve() not in linked]
    assert not missing, f"docs/index.md does not link {missing}"


# -- the generated reference -----------------------------------------------------------


def load_generator() -> ModuleType:
    """``docs/gen_api.py``, imported from its path (docs/ is not a package)."""
    name = "layercache_docs_gen_api"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, DOCS / "gen_api.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_reference_is_up_to_date() -> None:
    generated: str = load_generator().render().text
    current = (DOCS / "reference.md").read_text(encoding="utf-8")
    assert current == generated, (
        "docs/reference.md is out of date with the docstrings: run `python docs/gen_api.py`"
    )


@pytest.mark.parametrize("module", [layercache, layercache.testing], ids=lambda m: m.__name__)
def test_every_public_name_is_in_the_reference(module: ModuleType) -> None:
    reference = (DOCS / "reference.md").read_text(encoding="utf-8")
    missing = [name for name in module.__all__ if f"### `{name}`" not in reference]
    assert not missing, f"not in docs/reference.md: {missing} (run python docs/gen_api.py)"


# -- code in the guides ----------------------------------------------------------------


@pytest.mark.parametrize("block", python_blocks(GUIDES), ids=lambda block: block.id)
def test_python_blocks_compile(block: Block) -> None:
    # Fragments may await at top level, as they would inside an async function.
    compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)


def test_markers_mark_python_blocks() -> None:
    for page in GUIDES:
        for block in code_blocks(page):
            assert block.marker is None or block.language == "python", block.id
    assert len(python_blocks(GUIDES, "run")) >= 6
    assert python_blocks(GUIDES, "pytest")


@pytest.fixture
def program_env(embedded_redis: EmbeddedRedis) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": embedded_redis.url, "PYTHONUNBUFFERED": "1"}


def _run_block(
    block: Block, path: Path, command: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Write ``block`` to ``path`` and run ``command`` beside it; it must succeed."""
    path.write_text(block.code, encoding="utf-8")
    result = subprocess.run(
        command,
        cwd=path.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"{block.id} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.parametrize("block", python_blocks(GUIDES, "run"), ids=lambda block: block.id)
def test_programs_run(block: Block, tmp_path: Path, program_env: dict[str, str]) -> None:
    program = tmp_path / "program.py"
    _run_block(block, program, [sys.executable, str(program)], program_env)


@pytest.mark.parametrize("block", python_blocks(GUIDES, "pytest"), ids=lambda block: block.id)
def test_example_test_modules_pass(block: Block, tmp_path: Path) -> None:
    module = tmp_path / "test_docs_example.py"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", module.name]
    result = _run_block(block, module, command)
    assert " passed" in result.stdout
    assert "skipped" not in result.stdout


# -- operations.md keeps up with the code ----------------------------------------------


STATISTICS = [
    getattr(layercache, name)
    for name in layercache.__all__
    if name.endswith("Statistics") and dataclasses.is_dataclass(getattr(layercache, name))
]


@pytest.mark.parametrize("statistics", STATISTICS, ids=lambda cls: cls.__name__)
def test_operations_explains_every_statistic(statistics: type) -> None:
    operations = (DOCS / "operations.md").read_text(encoding="utf-8")
    fields = [field.name for field in dataclasses.fields(statistics)]
    missing = [name for name in fields if f"`{name}`" not in operations]
    assert not missing, f"docs/operations.md does not explain {statistics.__name__}.{missing}"


def test_operations_names_every_logger() -> None:
    operations = (DOCS / "operations.md").read_text(encoding="utf-8")
    names = set()
    for source in (ROOT / "layercache").rglob("*.py"):
        names.update(re.findall(r"getLogger\(\s*[\"']([\w.]+)[\"']", source.read_text()))
    assert names, "no loggers found"
    missing = sorted(name for name in names if f"`{name}`" not in operations)
    assert not missing, f"docs/operations.md does not name the loggers {missing}"
