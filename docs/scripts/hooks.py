"""MkDocs hooks of the lvlm_lens site (``hooks:`` in ``mkdocs.yml``).

- **Tutorials**: every ``notebooks/*.ipynb`` of the repository is rendered (by mkdocs-jupyter,
  without executing it) under ``notebooks/`` from its executed copy (``make notebooks``, see
  ``nb_outputs.py``), with a generated index page, and listed in the navigation in file-name
  order. A notebook without a current executed copy fails a ``--strict`` build (else warns): the
  site never shows a tutorial without its outputs. No notebook, no Tutorials section: the
  navigation never names a file that is not there.
- **Optional pages**: pages that other work adds (``claims.md``, ``testing.md``) join the
  navigation when they exist.
- **Command-line help**: ``<!-- cli-help: SUBCOMMAND -->`` in a page is replaced by the
  ``--help`` text of that ``lvlm-lens`` subcommand, so the CLI page cannot drift from the parser.
- **API index**: ``<!-- api-index -->`` is replaced by a table of ``lvlm_lens.__all__``, each
  name linked to its entry in the reference and summed up by the first line of its docstring.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

sys.path.insert(0, str(Path(__file__).parent))
from nb_outputs import EXECUTED, executed_copy  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("mkdocs.hooks.notebooks")
NOTEBOOKS = ROOT / "notebooks"
#: Section and title of pages that join the navigation only once they exist.
OPTIONAL_PAGES = {
    "claims.md": ("Results", "The paper's claims on the toy"),
    "testing.md": ("Background", "Testing"),
}
CLI_HELP = re.compile(r"<!--\s*cli-help:\s*([\w ]*?)\s*-->")
API_INDEX = "<!-- api-index -->"
ROLE = re.compile(r":\w+:`~?\.?([^`]+)`")


def notebooks() -> list[Path]:
    """The repository's notebooks, in file-name order."""
    return sorted(NOTEBOOKS.glob("*.ipynb")) if NOTEBOOKS.is_dir() else []


def notebook_title(path: Path) -> str:
    """The notebook's first Markdown heading, else its file name."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError):
        cells = []
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            text = "".join(cell.get("source", []))
            match = re.search(r"^#+\s+(.+)$", text, flags=re.M)
            if match:
                return match.group(1).strip()
    return path.stem.replace("_", " ")


def tutorials_index(paths: list[Path]) -> str:
    """Markdown of the generated ``notebooks/index.md``."""
    rows = "\n".join(f"- [{notebook_title(p)}]({p.name})" for p in paths)
    return (
        "# Tutorials\n\n"
        "The notebooks of the repository's `notebooks/` folder, shown with the outputs of "
        "their run in the test suite. Each runs top to bottom on a CPU with the bundled toy "
        "LVLM, seeded, so its code, numbers and figures match the library. Open one in "
        "Jupyter to run it yourself.\n\n" + rows + "\n"
    )


def _section(nav: list, name: str) -> list | None:
    for entry in nav:
        if isinstance(entry, dict) and name in entry:
            return entry[name]
    return None


def on_config(config: Any) -> Any:
    """Add the Tutorials section and the optional pages that exist to the navigation."""
    nav = config["nav"]
    docs = Path(config["docs_dir"])
    for page, (section, title) in OPTIONAL_PAGES.items():
        entries = _section(nav, section)
        listed = entries is not None and any(
            page in e.values() for e in entries if isinstance(e, dict)
        )
        if (docs / page).is_file() and entries is not None and not listed:
            entries.append({title: page})
    paths = notebooks()
    if paths and _section(nav, "Tutorials") is None:
        entries = ["notebooks/index.md"]
        # the navigation shows a title's head ("2 · Head attribution"), the index the whole
        entries += [{notebook_title(p).split(": ")[0]: f"notebooks/{p.name}"} for p in paths]
        at = next((i + 1 for i, e in enumerate(nav) if isinstance(e, dict) and "User guides" in e),
                  len(nav))
        nav.insert(at, {"Tutorials": entries})
    return config


@event_priority(50)  # before mkdocs-jupyter's on_files, which turns .ipynb files into pages
def on_files(files: Files, config: Any) -> Files:
    """Make each notebook (and the tutorials index) a file of the site."""
    paths = notebooks()
    if paths:
        files.append(File.generated(config, "notebooks/index.md", content=tutorials_index(paths)))
        unexecuted = []
        for path in paths:  # the executed copy, outside docs/ (build/executed/notebooks/)
            rel, src = path.relative_to(ROOT).as_posix(), EXECUTED
            copy, why = executed_copy(path)
            if copy is None:
                unexecuted.append(f"{rel}: {why}; run `make notebooks` (the page shows no outputs)")
                src = ROOT
            files.append(File(rel, str(src), config["site_dir"], config["use_directory_urls"]))
        if unexecuted and config.get("strict"):  # an error: `--quiet` drops warnings uncounted
            raise PluginError("\n".join(unexecuted))
        for line in unexecuted:
            log.warning(line)
    return files


def cli_help(command: str) -> str:
    """``lvlm-lens COMMAND --help``, as the parser prints it."""
    _package()
    from lvlm_lens.run.cli import build_parser

    out, columns = io.StringIO(), os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "86"  # argparse wraps to the terminal: the text column
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            build_parser().parse_args([*command.split(), "--help"])
    finally:
        if columns is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = columns
    return out.getvalue().rstrip()


def _package() -> Any:
    if str(ROOT) not in sys.path:  # the checkout's package, also when built from a worktree
        sys.path.insert(0, str(ROOT))
    import lvlm_lens

    return lvlm_lens


def api_index() -> str:
    """A Markdown table of the top-level names, linked to the subpackage pages."""
    import importlib
    import inspect

    sys.path.insert(0, str(Path(__file__).parent))
    from griffe_docstrings import API_MODULES

    pkg = _package()
    homes = {}
    for module in API_MODULES:
        mod = importlib.import_module(module)
        names = getattr(mod, "__all__", None) or [  # no __all__: what the module defines
            n for n in vars(mod) if getattr(getattr(mod, n), "__module__", None) == module
        ]
        for name in names:
            homes.setdefault(name, module)
    rows = ["| name | what |", "|---|---|"]
    for name in pkg.__all__:
        doc = (inspect.getdoc(getattr(pkg, name)) or "").split("\n\n")[0].replace("\n", " ")
        doc = ROLE.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", doc)
        rows.append(f"| [`{name}`][{homes[name]}.{name}] | {doc} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Replace the ``cli-help`` and ``api-index`` markers."""
    markdown = CLI_HELP.sub(lambda m: f"```text\n{cli_help(m.group(1))}\n```", markdown)
    if API_INDEX in markdown:
        markdown = markdown.replace(API_INDEX, api_index())
    return markdown


def on_serve(server: Any, config: Any, builder: Any) -> Any:
    """``mkdocs serve`` also rebuilds when a notebook changes."""
    if NOTEBOOKS.is_dir():
        server.watch(str(NOTEBOOKS))
    return server
