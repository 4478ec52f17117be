"""Turn the compat-surface survey (markdown) into the data files ``tests/compat/test_surface_list.py`` reads.

    python bench/compat_surface.py ../shared/reference/compat-surface.md [--out tests/compat/data]

Writes two tab-separated files:

* ``compat_surface.tsv`` (``symbol``, ``packs``, ``in_ref``): table (a), the module-level symbols
  used by at least two packs, with the survey's "in ref" verdict (``yes``, ``no``, ``no module``,
  ``module dunder``, ``?``).
* ``compat_chains.tsv`` (``section``, ``chain``, ``packs``, ``on_class``): the deeper chains used
  by at least two packs: (a2) attribute chains, (b) ``PromptServer.instance`` attributes and
  chains, and (c) MODEL / CLIP / VAE attributes (``MODEL``, ``CLIP``, ``VAE``, ``TWO_LEVEL``).

The survey is regenerated now and then; rerun this script and commit the files it writes.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "compat" / "data"
_CODE = re.compile(r"`([^`]*)`")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _tables(text: str) -> Iterator[tuple[str, list[str], list[list[str]]]]:
    """(heading above the table, header cells, body rows) for every markdown table."""
    heading = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if (
            line.startswith("|")
            and i + 1 < len(lines)
            and set(lines[i + 1].replace("|", "").strip()) <= set("-: ")
        ):
            header = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            yield heading, header, rows
            continue
        i += 1


def _code(cell: str) -> str:
    match = _CODE.search(cell)
    return match.group(1) if match else cell


def parse(text: str) -> tuple[list[tuple[str, int, str]], list[tuple[str, str, int, str]]]:
    """(table (a) rows, chain rows) of the survey ``text``."""
    symbols: list[tuple[str, int, str]] = []
    chains: list[tuple[str, str, int, str]] = []
    for heading, header, rows in _tables(text):
        col = {name: index for index, name in enumerate(header)}
        if heading.startswith("(a) Module-level symbols"):
            for row in rows:
                symbols.append((_code(row[col["symbol"]]), int(row[col["packs"]]), row[col["in ref"]]))
        elif heading.startswith("(a2)"):
            for row in rows:
                chains.append(("a2", _code(row[col["chain"]]), int(row[col["packs"]]), ""))
        elif heading.startswith("(b)"):
            key = (
                "PromptServer.instance.<attr>"
                if "PromptServer.instance.<attr>" in col
                else "PromptServer.instance chain"
            )
            for row in rows:
                name = _code(row[col[key]])
                if name.startswith("("):
                    continue  # "(bare PromptServer.instance)": not an attribute
                chains.append(("b", name, int(row[col["packs"]]), ""))
        elif heading in ("MODEL", "CLIP", "VAE"):
            for row in rows:
                chains.append(
                    (
                        heading,
                        _code(row[col["attribute / method"]]),
                        int(row[col["packs"]]),
                        row[col["on class"]],
                    )
                )
        elif heading.startswith("Two-level chains"):
            for row in rows:
                chains.append(
                    ("TWO_LEVEL", _code(row[col["chain"]]), int(row[col["packs"]]), row[col["on class"]])
                )
    # (b) lists single attributes and chains in two tables: keep each name once.
    unique: dict[tuple[str, str], tuple[str, str, int, str]] = {}
    for row in chains:
        unique.setdefault((row[0], row[1]), row)
    return symbols, list(unique.values())


def write(symbols: list[tuple[str, int, str]], chains: list[tuple[str, str, int, str]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = ["symbol\tpacks\tin_ref"] + [f"{s}\t{p}\t{r}" for s, p, r in symbols]
    (out / "compat_surface.tsv").write_text("\n".join(lines) + "\n")
    lines = ["section\tchain\tpacks\ton_class"] + [f"{s}\t{c}\t{p}\t{o}" for s, c, p, o in chains]
    (out / "compat_chains.tsv").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("survey", type=Path, help="path of compat-surface.md")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the .tsv files")
    args = parser.parse_args(argv)
    symbols, chains = parse(args.survey.read_text())
    if not symbols:
        print(f"no table (a) found in {args.survey}", file=sys.stderr)
        return 1
    write(symbols, chains, args.out)
    print(f"{len(symbols)} symbols, {len(chains)} chains -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
