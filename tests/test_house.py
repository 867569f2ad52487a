"""The house rules, checked on the source tree (no guest, no subprocess):

(a) every AIB type in the model has an implementation: each ``model.CustomizerType`` a registered
    customizer, each ``model.ValidatorType`` a step ``validators.validator_for`` accepts, each
    ``model.DistributorType`` a registered distributor (and nothing registered that the model lacks);
(b) every one of those implementations is exercised by a test module (rule: see ``exercising_tests``);
(c) no module under localbuilder/ imports inside a function, except the optional heavy dependencies;
(d) the module-level imports between localbuilder modules form no cycle, and only the commands import the
    orchestrator, only the commands and the orchestrator the guests;
(e) no module under localbuilder/ is longer than ``MAX_LINES`` unless ``LONG_MODULES`` says why.

Each failure message says what to fix.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import functools
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localbuilder import validators
from localbuilder.customizers import registered_types
from localbuilder.distributors import Distributor, distributor_for
from localbuilder.errors import CustomizerError
from localbuilder.template import model

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "localbuilder"
TESTS = REPO / "tests"

# Imported inside functions on purpose: optional or heavy, so that a build that does not need them does
# not pay for (or require) them. Top-level names.
LAZY_IMPORTS = frozenset({"libvirt", "azure", "cryptography"})

MAX_LINES = 620
# "localbuilder/<path>.py" → why it may be longer than MAX_LINES. Split the module instead when you can.
LONG_MODULES: dict[str, str] = {}


# ---- the source tree -------------------------------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def package_modules() -> dict[str, Path]:
    """Every module of the package: dotted name → file."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@functools.cache
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# ---- (a) every model type has an implementation ----------------------------------------------------------


def records(base: type) -> dict[str, type]:
    """The model records under ``base`` that carry a ``TYPE``: AIB type → record class."""
    found: dict[str, type] = {}
    stack = list(base.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if "TYPE" in vars(cls):
            found[str(vars(cls)["TYPE"])] = cls
    return found


def minimal(record: type) -> Any:
    """An instance of a model record with its required fields (all strings in the model) filled in."""
    required = {
        f.name: f"test-{f.name}"
        for f in dataclasses.fields(record)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    return record(**required)


def test_every_customizer_type_has_a_registered_customizer() -> None:
    registered = set(registered_types())
    missing = sorted(set(model.CustomizerType) - registered)
    assert not missing, (
        f"model.CustomizerType {missing} have no customizer: add "
        f'`class X(Customizer[...], type_name="X")` in localbuilder/customizers/<x>.py'
    )
    unknown = sorted(registered - set(model.CustomizerType))
    assert not unknown, (
        f"customizers {unknown} are registered but model.CustomizerType lacks them, so no template reaches "
        "them: add the type (and its record) to localbuilder/template/model.py, or remove the customizer"
    )


def test_every_customizer_type_has_a_model_record() -> None:
    missing = sorted(set(model.CustomizerType) - set(records(model.Customizer)))
    assert not missing, (
        f"model.CustomizerType {missing} have no record: add a model.Customizer subclass with that TYPE "
        "in localbuilder/template/model.py"
    )


@pytest.mark.parametrize("vtype", list(model.ValidatorType), ids=str)
def test_every_validator_type_is_accepted_by_validator_for(vtype: model.ValidatorType) -> None:
    by_type = {str(r.TYPE): r for r in typing.get_args(model.Validator)}
    assert vtype in by_type, (
        f"model.ValidatorType.{vtype} has no record in the model.Validator union: add its customizer record "
        "to `Validator = ...` in localbuilder/template/model.py"
    )
    step = validators.validator_for(minimal(by_type[vtype]))
    assert step.type_name == vtype, (
        f"validator_for() gave a {step.type_name!r} step for a {vtype!r} validator: "
        "fix localbuilder/validators.py (it must hand the step to its own customizer)"
    )


@pytest.mark.parametrize(
    "ctype", [t for t in model.CustomizerType if t not in set(model.ValidatorType)], ids=str
)
def test_validator_for_refuses_what_is_not_a_validator_type(ctype: model.CustomizerType) -> None:
    step = minimal(records(model.Customizer)[ctype])
    with pytest.raises(CustomizerError, match="is not a validator type"):
        validators.validator_for(step)


def test_every_distributor_type_has_a_registered_distributor() -> None:
    by_type = records(model.Distributor)
    missing_record = sorted(set(model.DistributorType) - set(by_type))
    assert not missing_record, (
        f"model.DistributorType {missing_record} have no record: add a model.Distributor subclass with that "
        "TYPE in localbuilder/template/model.py"
    )
    for dtype in model.DistributorType:
        distributor = distributor_for(minimal(by_type[dtype]))  # raises DistributeError when unregistered
        assert distributor.type_name == dtype, (
            f"distributor_for() gave {type(distributor).__name__} ({distributor.type_name!r}) for {dtype!r}: "
            "fix its type_name= in localbuilder/distributors/"
        )
    unknown = sorted(set(Distributor.registry) - set(model.DistributorType))
    assert not unknown, (
        f"distributors {unknown} are registered but model.DistributorType lacks them, so no template reaches "
        "them: add the type (and its record) to localbuilder/template/model.py, or remove the distributor"
    )


# ---- (b) every implementation is exercised by a test module ----------------------------------------------

# A test module reaches the implementations when it imports one of these (or the implementing module itself):
# they dispatch a model step to its registered class.
DISPATCHERS = (
    "localbuilder.customizers",
    "localbuilder.validators",
    "localbuilder.distributors",
    "localbuilder.orchestrator",
)


@dataclasses.dataclass(frozen=True)
class ScannedTest:
    path: Path
    imports: frozenset[str]  # modules imported, and ``module.name`` for each name imported from one
    words: frozenset[str]  # identifiers, attributes, keyword arguments, imported names, strings


@functools.cache
def scanned_tests() -> tuple[ScannedTest, ...]:
    found = []
    for path in sorted(TESTS.rglob("test_*.py")):
        if path == Path(__file__).resolve():
            continue  # this module names every type: it must not count as their test
        imports: set[str] = set()
        words: set[str] = set()
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.Import):
                imports.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imports.add(node.module)
                imports.update(f"{node.module}.{alias.name}" for alias in node.names)
                words.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                words.add(node.value)
            elif isinstance(node, ast.Name):
                words.add(node.id)
            elif isinstance(node, ast.Attribute):
                words.add(node.attr)
            elif isinstance(node, ast.keyword) and node.arg:
                words.add(node.arg)
        found.append(ScannedTest(path, frozenset(imports), frozenset(words)))
    return tuple(found)


def exercising_tests(type_name: str, impl: type, record: type) -> list[str]:
    """The test modules that exercise ``impl``: they import its module or a dispatcher (DISPATCHERS), and
    name the type — the AIB type as a string (``"type": "Shell"``), the model record (``ShellCustomizer``),
    the enum member (``CustomizerType.Shell``) or the implementing class."""
    reach = (*DISPATCHERS, impl.__module__)
    names = {type_name, record.__name__, impl.__name__}
    return [
        rel(t.path)
        for t in scanned_tests()
        if any(i == r or i.startswith(r + ".") for i in t.imports for r in reach) and names & t.words
    ]


def implementations() -> Iterator[tuple[str, str, type, type]]:
    """(kind, AIB type, implementing class, model record) for every customizer, validator and distributor."""
    customizer_records = records(model.Customizer)
    for name, cls in sorted(registered_types().items()):
        yield "customizer", name, cls, customizer_records[name]
    for record in typing.get_args(model.Validator):
        yield "validator", str(record.TYPE), type(validators.validator_for(minimal(record))), record
    for name, record in sorted(records(model.Distributor).items()):
        yield "distributor", name, type(distributor_for(minimal(record))), record


@pytest.mark.parametrize(
    ("kind", "type_name", "impl", "record"),
    [pytest.param(*case, id=f"{case[0]}-{case[1]}") for case in implementations()],
)
def test_every_implementation_is_exercised_by_a_test_module(
    kind: str, type_name: str, impl: type, record: type
) -> None:
    assert exercising_tests(type_name, impl, record), (
        f"no test module exercises the {type_name} {kind} ({impl.__module__}.{impl.__name__}): add a "
        f"tests/**/test_*.py that runs a {type_name} step through {impl.__module__} or a dispatcher "
        f"({', '.join(DISPATCHERS)}) — e.g. a Build on tests/build/fakes.py's FakePlatform, or "
        f"{'distributor_for' if kind == 'distributor' else 'customizer_for'}({record.__name__}(...)) with a "
        "fake communicator"
    )


def test_the_validation_phase_is_exercised_by_a_test_module() -> None:
    # The validator types reuse the customizers (checked above); this is the phase that runs them.
    names = {"in_vm_validations", "inVMValidations", "validator_for"}
    reach = ("localbuilder.validators", "localbuilder.orchestrator")
    found = [
        rel(t.path)
        for t in scanned_tests()
        if names & t.words and any(i == r or i.startswith(r + ".") for i in t.imports for r in reach)
    ]
    assert found, (
        "no test module runs in-VM validations: add a test that builds a template with "
        "validate.inVMValidations on tests/build/fakes.py's FakePlatform (see localbuilder/validators.py)"
    )


# ---- (c) no import inside a function ---------------------------------------------------------------------


def imports_in_functions(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, imported module) of every import statement inside a function body, nested ones once."""
    seen: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for sub in ast.walk(node):
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            if isinstance(sub, ast.Import):
                for alias in sub.names:
                    yield sub.lineno, alias.name
            elif isinstance(sub, ast.ImportFrom):
                yield sub.lineno, "." * sub.level + (sub.module or "")


def test_no_import_inside_a_function() -> None:
    found = [
        f"{rel(path)}:{line} imports {name}"
        for path in package_modules().values()
        for line, name in imports_in_functions(parse(path))
        if name.split(".")[0] not in LAZY_IMPORTS
    ]
    assert not found, (
        "imports inside functions (move them to the top of the module; only the optional heavy "
        f"dependencies {sorted(LAZY_IMPORTS)} may be imported late — a cycle is fixed by moving code, "
        "not by a late import):\n  " + "\n  ".join(found)
    )


# ---- (d) no import cycle ---------------------------------------------------------------------------------


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """The imports that run when the module is imported: the top level, and inside top-level if/try/with
    blocks, but not ``if TYPE_CHECKING:`` (never run) nor function or class bodies."""
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            stack.extend(node.orelse)
            if not _is_type_checking(node.test):
                stack.extend(node.body)
        elif isinstance(node, ast.Try):
            stack.extend([*node.body, *node.orelse, *node.finalbody])
            stack.extend(s for handler in node.handlers for s in handler.body)
        elif isinstance(node, ast.With):
            stack.extend(node.body)


def imported_modules(name: str, path: Path) -> set[str]:
    """The localbuilder modules ``name`` imports at module level, each named as precisely as the import
    says: ``from localbuilder.template import model`` is localbuilder.template.model, ``from
    localbuilder.guest import Platform`` is localbuilder.guest (the package's ``__init__``)."""
    modules = package_modules()
    found: set[str] = set()
    for node in module_level_imports(parse(path)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    return {name: imported_modules(name, path) for name, path in package_modules().items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, …, a]``) for each strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_through(min(c), set(c), graph) for c in components]


def _cycle_through(start: str, component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest path start → … → start inside one strongly connected component (breadth first)."""
    parent: dict[str, str | None] = {start: None}
    queue = collections.deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v] & component):
            if w == start:
                path = [v]
                while (up := parent[path[-1]]) is not None:
                    path.append(up)
                return [*reversed(path), start]
            if w not in parent:
                parent[w] = v
                queue.append(w)
    raise AssertionError(f"{start} is in a strongly connected component but on no cycle")


def test_find_cycles_reports_the_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]  # a self-import is not a cycle between modules
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_localbuilder_modules() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, (
        "import cycles between localbuilder modules (module-level imports): make the dependency one-way — "
        "move what both sides need into a module lower down (or into the one that is imported), never a "
        "late import:\n  " + "\n  ".join(" → ".join(c) for c in cycles)
    )


# The layers docs/ARCHITECTURE.md draws: commands → orchestrator → guest → (communicator, hypervisor, …).
UPPER_LAYERS = {
    "localbuilder.orchestrator": {"localbuilder.commands"},
    "localbuilder.guest": {"localbuilder.commands", "localbuilder.orchestrator"},
}


def test_orchestrator_and_guest_are_imported_only_from_above() -> None:
    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    found = [
        f"{importer} imports {imported}"
        for importer, imports in sorted(import_graph().items())
        for imported in sorted(imports)
        if package(imported) in UPPER_LAYERS
        and package(importer) != package(imported)
        and package(importer) not in UPPER_LAYERS[package(imported)]
    ]
    assert not found, (
        "a lower layer imports the orchestrator or the guests (the dependency is one-way: commands → "
        "orchestrator → guest → communicator, hypervisor, …): pass what it needs down as an argument or a "
        "Protocol instead:\n  " + "\n  ".join(found)
    )


# ---- (e) module size -------------------------------------------------------------------------------------


def test_no_module_over_the_line_limit() -> None:
    sizes = {rel(p): len(p.read_text().splitlines()) for p in package_modules().values()}
    over = {path: n for path, n in sizes.items() if n > MAX_LINES and path not in LONG_MODULES}
    assert not over, (
        f"modules over {MAX_LINES} lines: split them by concept (one module per concept, see "
        "docs/ARCHITECTURE.md), or add them to LONG_MODULES in tests/test_house.py with the reason:\n  "
        + "\n  ".join(f"{path}: {n} lines" for path, n in sorted(over.items()))
    )
    stale = sorted(path for path in LONG_MODULES if sizes.get(path, 0) <= MAX_LINES)
    assert not stale, f"LONG_MODULES in tests/test_house.py lists modules that no longer need it: {stale}"
