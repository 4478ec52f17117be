"""Write the table of the reference's node classes that ``comfy_extras.nodes_*`` / ``nodes`` expose.

    python bench/reference_classes.py COMFYUI_GIT_DIR [--ref HEAD]
        [--golden ../shared/golden/object_info_core.json]
        [--surface ../shared/reference/compat-surface.md] [--out PATH]

Reads the reference's source (a ComfyUI checkout's git directory, at ``--ref``) with ``ast`` only;
nothing of it is imported or copied. The modules covered are ``nodes`` plus every
``comfy_extras.nodes_*`` module the golden ``/object_info`` names as a ``python_module`` or the
compat-surface survey says packs import. One row per node class of those modules (the classes the
module's ``NODE_CLASS_MAPPINGS`` or its extension's ``get_node_list`` publishes):

* ``module``, ``class`` (the Python class name), ``node_id``;
* ``v3``: the class is a schema node (``io.ComfyNode``), else a classic one (``FUNCTION``);
* for V3, ``execute``: the parameter names of its ``execute`` classmethod in order (how a pack's
  positional call binds), ``execute_varkw`` (it takes ``**kwargs``), ``execute_async``,
  ``execute_aliases``: the older method names the class keeps bound to ``execute``
  (``expand_mask = execute``), and ``inputs``: the schema's input ids in schema order (null where
  the schema builds them in code);
* ``golden``: the node id is one of the golden file's classes.

The script checks the table against the golden file (every golden class has a row in its
``python_module``; V3 input ids are the golden ones) and exits non-zero on a mismatch, so a table
from a source that differs from the golden version is not written silently. Commit what it writes.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "plugins" / "comfy_compat" / "reference_classes.json"
DEFAULT_GOLDEN = ROOT.parent / "shared" / "golden" / "object_info_core.json"
DEFAULT_SURFACE = ROOT.parent / "shared" / "reference" / "compat-surface.md"
_SURFACE_MODULE = re.compile(r"comfy_extras\.(nodes_[a-z0-9_]+)")


@dataclass
class ClassFacts:
    """What one module-level class statement says, before its bases are resolved."""

    module: str
    name: str
    bases: list[str]  # dotted names as written
    methods: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)  # ``NAME = <literal>`` in the body
    execute_aliases: list[str] = field(default_factory=list)  # ``expand_mask = execute``


@dataclass
class ModuleFacts:
    name: str
    classes: dict[str, ClassFacts]
    imports: dict[str, str]  # local name -> dotted target (module or module.attr)
    mappings: dict[str, str]  # NODE_CLASS_MAPPINGS: node id -> class name
    node_list: list[str]  # the V3 extension's get_node_list() classes
    # Classes put in NODE_CLASS_MAPPINGS by a loop, under a class attribute: (attribute, classes).
    looped: tuple[str, list[str]] | None = None


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


def _read(git_dir: Path, ref: str, path: str) -> str | None:
    run = subprocess.run(
        ["git", "--git-dir", str(git_dir), "show", f"{ref}:{path}"], capture_output=True, text=True
    )
    return run.stdout if run.returncode == 0 else None


def _parse_module(name: str, source: str) -> ModuleFacts:
    tree = ast.parse(source)
    classes: dict[str, ClassFacts] = {}
    imports: dict[str, str] = {}
    mappings: dict[str, str] = {}
    node_list: list[str] = []
    lists: dict[str, list[str]] = {}
    looped = None
    for stmt in tree.body:
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                if alias.asname:
                    imports[alias.asname] = alias.name
                else:
                    top = alias.name.partition(".")[0]
                    imports.setdefault(top, top)
        elif isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0:
            for alias in stmt.names:
                imports[alias.asname or alias.name] = f"{stmt.module}.{alias.name}"
        elif isinstance(stmt, ast.ClassDef):
            facts = ClassFacts(name, stmt.name, [b for b in map(_dotted, stmt.bases) if b])
            for item in stmt.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    facts.methods[item.name] = item
                elif isinstance(item, ast.Assign) and isinstance(item.value, ast.Constant):
                    for target in item.targets:
                        if isinstance(target, ast.Name):
                            facts.constants[target.id] = item.value.value
                elif isinstance(item, ast.Assign) and _dotted(item.value) == "execute":
                    facts.execute_aliases += [t.id for t in item.targets if isinstance(t, ast.Name)]
            classes[stmt.name] = facts
            if any(b.endswith("ComfyExtension") for b in facts.bases):
                node_list = _node_list(stmt)
        elif isinstance(stmt, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "NODE_CLASS_MAPPINGS" for t in stmt.targets
        ):
            if isinstance(stmt.value, ast.Dict):
                for key, value in zip(stmt.value.keys, stmt.value.values, strict=True):
                    if isinstance(key, ast.Constant) and isinstance(value, ast.Name):
                        mappings[key.value] = value.id
        elif isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.List):
            names = [e.id for e in stmt.value.elts if isinstance(e, ast.Name)]
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    lists[target.id] = names
        elif isinstance(stmt, ast.For) and isinstance(stmt.iter, ast.Name) and stmt.iter.id in lists:
            attribute = _mapping_key_attribute(stmt)
            if attribute is not None:
                looped = (attribute, lists[stmt.iter.id])
    return ModuleFacts(name, classes, imports, mappings, node_list, looped)


def _mapping_key_attribute(loop: ast.For) -> str | None:
    """``NodeId`` for ``for node in L: NODE_CLASS_MAPPINGS[node.NodeId] = node``."""
    for stmt in loop.body:
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if (
                    isinstance(target, ast.Subscript)
                    and _dotted(target.value) == "NODE_CLASS_MAPPINGS"
                    and isinstance(target.slice, ast.Attribute)
                ):
                    return target.slice.attr
    return None


def _node_list(extension: ast.ClassDef) -> list[str]:
    for item in extension.body:
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name == "get_node_list":
            for node in ast.walk(item):
                if isinstance(node, ast.Return) and isinstance(node.value, ast.List):
                    return [n.id for n in node.value.elts if isinstance(n, ast.Name)]
    return []


class Source:
    """The reference's modules, parsed on demand."""

    def __init__(self, git_dir: Path, ref: str) -> None:
        self.git_dir = git_dir
        self.ref = ref
        self._modules: dict[str, ModuleFacts | None] = {}

    def module(self, name: str) -> ModuleFacts | None:
        if name not in self._modules:
            text = _read(self.git_dir, self.ref, name.replace(".", "/") + ".py")
            self._modules[name] = _parse_module(name, text) if text is not None else None
        return self._modules[name]

    def resolve(self, module: ModuleFacts, dotted: str) -> ClassFacts | str:
        """The class a base expression names, or the dotted name it stands for when not parsed."""
        head, _, rest = dotted.partition(".")
        if not rest and head in module.classes:
            return module.classes[head]
        target = module.imports.get(head)
        full = f"{target}.{rest}" if target and rest else (target or dotted)
        owner, _, cls_name = full.rpartition(".")
        if owner.startswith(("comfy_extras.", "nodes")) or owner == "nodes":
            other = self.module(owner)
            if other is not None and cls_name in other.classes:
                return other.classes[cls_name]
        return full

    def mro(self, cls: ClassFacts) -> list[ClassFacts | str]:
        """``cls`` and its bases depth first (external bases as dotted names)."""
        order: list[ClassFacts | str] = [cls]
        module = self.module(cls.module)
        assert module is not None
        for base in cls.bases:
            found = self.resolve(module, base)
            order.extend(self.mro(found) if isinstance(found, ClassFacts) else [found])
        return order

    def method(self, cls: ClassFacts, name: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        for item in self.mro(cls):
            if isinstance(item, ClassFacts) and name in item.methods:
                return item.methods[name]
        return None

    def constant(self, cls: ClassFacts, name: str) -> Any:
        for item in self.mro(cls):
            if isinstance(item, ClassFacts) and name in item.constants:
                return item.constants[name]
        return None

    def schema(self, cls: ClassFacts) -> tuple[str | None, list[str] | None]:
        """(node id, input ids) of the class's schema, following ``super().define_schema()``."""
        node_id: str | None = None
        inputs: list[str] | None = None
        found_inputs = False
        for item in self.mro(cls):
            if not isinstance(item, ClassFacts) or "define_schema" not in item.methods:
                continue
            fn = item.methods["define_schema"]
            own_id, own_inputs, has_inputs = _schema_facts(fn)
            node_id = node_id or own_id
            if has_inputs and not found_inputs:
                inputs, found_inputs = own_inputs, True
            if not _calls_super(fn):
                break
        return node_id, inputs

    def is_v3(self, cls: ClassFacts) -> bool:
        return any(isinstance(b, str) and b.endswith(".ComfyNode") for b in self.mro(cls))


def _schema_call(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.Call | None:
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and (_dotted(node.func) or "").endswith("Schema"):
            return node
    return None


def _input_id(element: ast.expr, local: dict[str, ast.expr]) -> str | None:
    if isinstance(element, ast.Name) and element.id in local:
        element = local[element.id]
    if isinstance(element, ast.Call) and (_dotted(element.func) or "").endswith(".Input"):
        if element.args and isinstance(element.args[0], ast.Constant):
            return str(element.args[0].value)
        for kw in element.keywords:
            if kw.arg == "id" and isinstance(kw.value, ast.Constant):
                return str(kw.value.value)
    return None


def _calls_super(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"
        for node in ast.walk(fn)
    )


def _input_ids(value: ast.expr, local: dict[str, ast.expr]) -> list[str] | None:
    if isinstance(value, ast.Name):
        value = local.get(value.id, value)
    if not isinstance(value, ast.List):
        return None
    ids = [_input_id(e, local) for e in value.elts]
    return None if any(i is None for i in ids) else [i for i in ids if i is not None]


def _schema_facts(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[str | None, list[str] | None, bool]:
    """(node id, input ids, whether inputs are set here) of one ``define_schema``: from its
    ``Schema(node_id=..., inputs=[...])`` call or ``schema.node_id = ...`` assignments; None for
    what is computed in code."""
    local = {
        t.id: stmt.value
        for stmt in ast.walk(fn)
        if isinstance(stmt, ast.Assign)
        for t in stmt.targets
        if isinstance(t, ast.Name)
    }
    node_id = None
    inputs: list[str] | None = None
    has_inputs = False
    call = _schema_call(fn)
    if call is not None:
        has_inputs = True
        inputs = []
        for kw in call.keywords:
            if kw.arg == "node_id" and isinstance(kw.value, ast.Constant):
                node_id = str(kw.value.value)
            elif kw.arg == "inputs":
                inputs = _input_ids(kw.value, local)
    for stmt in ast.walk(fn):
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if isinstance(target, ast.Attribute) and target.attr == "node_id":
                    if isinstance(stmt.value, ast.Constant):
                        node_id = str(stmt.value.value)
                elif isinstance(target, ast.Attribute) and target.attr == "inputs":
                    inputs, has_inputs = _input_ids(stmt.value, local), True
    return node_id, inputs, has_inputs


def _execute_facts(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, Any]:
    args = fn.args
    names = [a.arg for a in [*args.posonlyargs, *args.args][1:]]  # without ``cls``
    names += [a.arg for a in args.kwonlyargs]
    return {
        "execute": names,
        "execute_varkw": args.kwarg is not None,
        "execute_async": isinstance(fn, ast.AsyncFunctionDef),
    }


def module_names(golden: dict[str, Any], surface: str) -> list[str]:
    names = {info["python_module"] for info in golden.values()}
    names |= {f"comfy_extras.{m}" for m in _SURFACE_MODULE.findall(surface)}
    names.discard("comfy_extras")
    return sorted(names, key=lambda n: (n != "nodes", n))


def build(
    source: Source, modules: list[str], golden: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for module_name in modules:
        module = source.module(module_name)
        if module is None:
            problems.append(f"{module_name}: not in the source")
            continue
        published = [(node, cls) for node, cls in module.mappings.items()]
        published += [(None, cls) for cls in module.node_list]
        if module.looped is not None:
            attribute, looped = module.looped
            for class_name in looped:
                facts = module.classes.get(class_name)
                node = source.constant(facts, attribute) if facts is not None else None
                published.append((node if isinstance(node, str) else None, class_name))
        for node_id, class_name in published:
            facts = module.classes.get(class_name)
            if facts is None:
                problems.append(f"{module_name}.{class_name}: published but not defined in the module")
                continue
            row: dict[str, Any] = {"module": module_name, "class": class_name, "node_id": node_id}
            row["v3"] = source.is_v3(facts)
            if row["v3"]:
                execute = source.method(facts, "execute")
                schema_id, inputs = source.schema(facts)
                row["node_id"] = node_id or schema_id
                if execute is None:
                    problems.append(f"{module_name}.{class_name}: V3 class without an execute")
                    continue
                row.update(_execute_facts(execute))
                row["execute_aliases"] = sorted(
                    {a for c in source.mro(facts) if isinstance(c, ClassFacts) for a in c.execute_aliases}
                )
                row["inputs"] = inputs
            if row["node_id"] is None:
                problems.append(f"{module_name}.{class_name}: node id not found")
                continue
            row["golden"] = row["node_id"] in golden
            rows.append(row)
    return rows, problems


def check(rows: list[dict[str, Any]], golden: dict[str, Any]) -> list[str]:
    """Where the table disagrees with the golden file."""
    problems = []
    by_id = {r["node_id"]: r for r in rows}
    for node_id, info in golden.items():
        row = by_id.get(node_id)
        if row is None or row["module"] != info["python_module"]:
            problems.append(
                f"{node_id}: golden module {info['python_module']}, table {row and row['module']}"
            )
            continue
        if row["v3"] and row["inputs"] is not None:
            order = info.get("input_order", {})
            declared = [*order.get("required", []), *order.get("optional", [])]
            if set(row["inputs"]) != set(declared):
                problems.append(f"{node_id}: schema inputs {row['inputs']} vs golden {declared}")
    return problems


def _dump(table: dict[str, Any]) -> str:
    """JSON with one line per module and per class row, so a regenerated table diffs by row."""
    lines = ["{"]
    lines.append(f' "reference_version": {json.dumps(table["reference_version"])},')
    lines.append(' "modules": [')
    lines.append(",\n".join(f"  {json.dumps(m)}" for m in table["modules"]))
    lines.append(" ],")
    lines.append(' "classes": [')
    lines.append(",\n".join(f"  {json.dumps(r)}" for r in table["classes"]))
    lines.append(" ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("git_dir", type=Path, help="a ComfyUI checkout's git directory")
    parser.add_argument("--ref", default="HEAD")
    parser.add_argument("--golden", type=Path, default=DEFAULT_GOLDEN)
    parser.add_argument("--surface", type=Path, default=DEFAULT_SURFACE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    golden = json.loads(args.golden.read_text())
    source = Source(args.git_dir, args.ref)
    version = _read(args.git_dir, args.ref, "comfyui_version.py") or ""
    modules = module_names(golden, args.surface.read_text())
    rows, problems = build(source, modules, golden)
    problems += check(rows, golden)
    for problem in problems:
        print("problem:", problem, file=sys.stderr)
    if problems:
        return 1
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", version)
    table = {
        "reference_version": match.group(1) if match else None,
        "modules": modules,
        "classes": sorted(rows, key=lambda r: (r["module"], r["class"])),
    }
    args.out.write_text(_dump(table))
    v3 = sum(r["v3"] for r in rows)
    print(f"{len(rows)} classes ({v3} V3) in {len(modules)} modules -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
