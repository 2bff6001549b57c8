"""The structure a newcomer relies on, checked: the domain/client/CLI never import the actors,
transport never imports the domain it carries, the domain reaches NATS only through its store
adapters, subject strings live only in events/, and no product function grows past 120 lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("actors", "events", "hosts", "ktrdr")
MAX_FUNCTION_LINES = 120
SUBJECT_LITERAL = re.compile(r"^(ops|cmd|work|ib|\$KV|\$JS|\$O)\.[A-Za-z*>]")


def product_files(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def imported_modules(tree: ast.AST) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)  # `from ktrdr import data`
    return out


def _is_under(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_nothing_under_ktrdr_imports_the_actors():
    offenders = [f"{p.relative_to(ROOT)} imports {m}" for p in product_files("ktrdr")
                 for m in imported_modules(ast.parse(p.read_text())) if m == "actors" or m.startswith("actors.")]
    assert offenders == []


def test_events_import_nothing_but_themselves_and_libraries():
    offenders = [f"{p.relative_to(ROOT)} imports {m}" for p in product_files("events")
                 for m in imported_modules(ast.parse(p.read_text())) if m.split(".")[0] in ("actors", "ktrdr", "hosts")]
    assert offenders == []


def test_transport_imports_nothing_from_the_data_or_training_domain():
    # Every import counts, also the ones inside functions or under TYPE_CHECKING: a store that needs
    # the domain lives beside the domain, not in the transport.
    offenders = [f"{p.relative_to(ROOT)} imports {m}" for p in product_files("ktrdr/transport")
                 for m in imported_modules(ast.parse(p.read_text())) if _is_under(m, "ktrdr.data", "ktrdr.training")]
    assert offenders == []


# The NATS-aware adapters that keep the domain's bytes in the object buckets; every other module of
# the data and training domains is plain Python that a test runs without a server.
STORE_ADAPTERS = {"ktrdr/data/bars_store.py", "ktrdr/data/series_lease.py", "ktrdr/training/model_store.py",
                  "ktrdr/training/checkpoint_store.py"}


def test_the_data_and_training_domains_reach_nats_only_through_their_store_adapters():
    offenders = [f"{p.relative_to(ROOT)} imports {m}" for p in product_files("ktrdr/data", "ktrdr/training")
                 if str(p.relative_to(ROOT)) not in STORE_ADAPTERS
                 for m in imported_modules(ast.parse(p.read_text())) if _is_under(m, "nats", "ktrdr.transport")]
    assert offenders == []
    assert all((ROOT / f).exists() for f in STORE_ADAPTERS)


def test_subject_strings_appear_only_in_events():
    offenders = []
    for p in product_files("actors", "hosts", "ktrdr"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SUBJECT_LITERAL.match(node.value):
                offenders.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.value!r}")
            if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant) \
                    and SUBJECT_LITERAL.match(str(node.values[0].value)):
                offenders.append(f"{p.relative_to(ROOT)}:{node.lineno} f-string {node.values[0].value!r}...")
    assert offenders == []


def test_no_product_function_is_longer_than_120_lines():
    long = []
    for p in product_files(*PRODUCT):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


MAX_ORCHESTRATOR_LINES = 200


def test_the_orchestrator_is_a_thin_shell():
    """It applies what ktrdr/ops decides and talks to NATS; the decisions live (and are tested) there."""
    tree = ast.parse((ROOT / "actors" / "orchestrator.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Orchestrator")
    assert (cls.end_lineno or cls.lineno) - cls.lineno + 1 < MAX_ORCHESTRATOR_LINES


def test_environment_is_read_only_through_settings():
    offenders = []
    for p in product_files(*PRODUCT):
        if p.name == "config.py":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("getenv", "environ") and \
                    isinstance(node.value, ast.Name) and node.value.id == "os":
                offenders.append(f"{p.relative_to(ROOT)}:{node.lineno} os.{node.attr}")
    # Passing the whole environment on to a child process is not reading a setting.
    allowed = {"ktrdr/embedded.py", "ktrdr/training/process.py"}
    assert [o for o in offenders if o.split(":")[0] not in allowed] == []


def _under_type_checking(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` blocks (imports for annotations only)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return inside


def import_graph(*packages: str) -> dict[str, set[str]]:
    """Module -> the product modules it imports, at module level or inside a function (an import
    deferred into a function is still a dependency), leaving out `if TYPE_CHECKING:` imports."""
    modules: dict[str, Path] = {}
    for p in product_files(*packages):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _under_type_checking(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        out: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for a in node.names:  # `from pkg import mod` imports the module pkg.mod
                    out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
        graph[name] = {m for m in out if m in modules and m != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_import_cycles_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_product_modules() -> None:
    """Two modules that import each other (even inside a function: ktrdr.embedded and ktrdr.web
    did, for port_open) can only be read, tested and changed together."""
    cycles = import_cycles(import_graph(*PRODUCT))
    assert cycles == []


def test_no_reader_trusts_an_events_body_alone():
    """Issue 18 (F1/F3): an event read off NATS means only what its subject proves, so every reader
    decodes it with events.codec.decode_event_on(subject, data); `decode_event(data)` (the body alone)
    is called nowhere in the product or the benchmarks."""
    offenders = []
    for p in [*product_files(*PRODUCT), *product_files("bench")]:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in ("decode_event", "decode_cancel"):
                    offenders.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
