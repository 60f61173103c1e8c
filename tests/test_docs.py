"""Every ```python block in README.md and docs/*.md runs, so the guides cannot drift from the code.

The rule for writers (stated in docs/index.md): a block fenced ```python is
executed; any other fence (```py, ```bash, ```text…) is an illustration and is
not. Every fence names its language, so a Python sample cannot escape the run
by accident.

Each file's blocks run in order in one fresh module, so a later block can use
the classes and variables of an earlier one, inside one test transaction
(pytest-django's `db`). A failure points at the Markdown file and line: each
block is compiled with the file's name and padded to its own line numbers.

Samples are written as if their classes lived in an installed app, imported
when Django starts and so before `migrate`. After each block the harness does
what `migrate` would then have done for them: create the dispatch permission
of each command type the block registered.
"""

from __future__ import annotations

import re
import sys
import textwrap
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from eventsourcing_app.apps import create_command_permissions
from eventsourcing_app.conf import DEFAULTS
from eventsourcing_app.registry import Registry
from eventsourcing_app.store import event_registry

REPO_ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
RUNNABLE = "python"

# An opening fence (any indentation, as inside a list item), its info string, the body, the closing fence.
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


@dataclass(frozen=True)
class Block:
    language: str
    source: str
    line: int  # 1-based line of the block's first code line in its file


def blocks_of(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    return [
        Block(
            language=match["info"].strip().split(" ")[0],
            source=textwrap.dedent(match["body"]),
            line=text.count("\n", 0, match.start("body")) + 1,
        )
        for match in FENCE.finditer(text)
    ]


def doc_id(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def runnable_files() -> list[Path]:
    return [path for path in DOC_FILES if any(block.language == RUNNABLE for block in blocks_of(path))]


def _registries() -> list[Registry]:
    """Every registry the app has loaded, except events: docs register into these, and must not leak.

    The event registry is left as the docs fill it, so two guides that define the
    same event type name fail here, as they would in a user's shell.
    """
    found: dict[int, Registry] = {}
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("eventsourcing_app"):
            continue
        for value in vars(module).values():
            if isinstance(value, Registry) and value is not event_registry:
                found[id(value)] = value
    return list(found.values())


@contextmanager
def _registries_restored() -> Iterator[None]:
    saved = [(registry, dict(registry._registry)) for registry in _registries()]
    try:
        yield
    finally:
        for registry, entries in saved:
            for name in set(registry._registry) - set(entries):
                unregister = getattr(registry, "unregister", None)
                if unregister is not None:
                    unregister(name)
                else:
                    del registry._registry[name]


@contextmanager
def _doc_module(path: Path) -> Iterator[types.ModuleType]:
    """A real module for the file's samples: dataclasses and type hints resolve names through it."""
    name = "docs_sample_" + re.sub(r"\W", "_", doc_id(path).removesuffix(".md").lower())
    module = types.ModuleType(name, f"The ```python samples of {doc_id(path)}.")
    sys.modules[name] = module
    try:
        yield module
    finally:
        del sys.modules[name]


def test_every_fence_names_its_language() -> None:
    """A bare ``` fence would silently keep a Python sample out of the run: each must say what it holds."""
    unnamed = [
        f"{doc_id(path)}:{block.line - 1}" for path in DOC_FILES for block in blocks_of(path) if not block.language
    ]
    assert not unnamed, f"fences without a language (use ```python to run, ```py/```text/```bash not to): {unnamed}"


def test_the_docs_have_runnable_samples() -> None:
    assert doc_id(REPO_ROOT / "README.md") in [doc_id(path) for path in runnable_files()]
    assert len(runnable_files()) > 1


def test_the_settings_guide_documents_every_key() -> None:
    """A key added to conf.DEFAULTS without a line in docs/settings.md is a setting nobody can find."""
    guide = (REPO_ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert [key for key in DEFAULTS if f"| `{key}` |" not in guide] == []


@pytest.mark.parametrize("path", runnable_files(), ids=doc_id)
def test_python_samples_run(path: Path, db: None) -> None:
    with _registries_restored(), _doc_module(path) as module:
        for block in blocks_of(path):
            if block.language != RUNNABLE:
                continue
            # Padding with blank lines makes tracebacks name the Markdown file's own line numbers.
            code = compile("\n" * (block.line - 1) + block.source, str(path), "exec")
            exec(code, vars(module))
            create_command_permissions()
