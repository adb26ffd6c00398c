"""Split tests/ into one file per module (issue 22 item 5). Usage: python split_tests.py REPO [--dry]

MAP: source file -> (default target or None = keep, {test name: target or "DROP"}).
Shared helpers used by tests landing in several targets go to tests/florence_testing.py (plain) or conftest.py
(fixtures)."""

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

from split_map import DOCS, MAP  # noqa


def node_start(lines, node):
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    while start > 1 and lines[start - 2].lstrip().startswith("#"):
        start -= 1
    return start


def names_used(node):
    """Free names a node reads (locals of functions excluded), plus fixture parameters of tests and fixtures."""
    loads, stores = set(), set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            (loads if isinstance(sub.ctx, ast.Load) else stores).add(sub.id)
        elif isinstance(sub, ast.arg):
            stores.add(sub.arg)
        elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", sub.value):
                loads.add(sub.value)  # usefixtures("x"), indirect parametrisation
    used = loads - (stores if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else set())
    if isinstance(node, ast.FunctionDef) and (node.name.startswith("test_") or is_fixture(node)):
        used |= {a.arg for a in node.args.args}
    if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        used = loads
    return used


def defined_names(node):
    if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
        return {node.name}
    if isinstance(node, ast.Assign):
        out = set()
        for target in node.targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Name):
                    out.add(sub.id)
        return out
    if isinstance(node, ast.AnnAssign):
        return {node.target.id} if isinstance(node.target, ast.Name) else set()
    return set()


def is_fixture(node):
    return isinstance(node, ast.FunctionDef) and any("fixture" in ast.unparse(d) for d in node.decorator_list)


class Source:
    def __init__(self, path):
        self.path = path
        self.text = path.read_text()
        self.lines = self.text.splitlines()
        tree = ast.parse(self.text)
        self.imports, self.others, self.tests, self.pytestmark = [], [], [], None
        self.late = []  # sys.path set-up statements and the imports after them, kept in order
        last_import = max(i for i, n in enumerate(tree.body) if isinstance(n, (ast.Import, ast.ImportFrom)))
        first_setup = min([i for i, n in enumerate(tree.body[1:], 1) if isinstance(n, ast.Expr)] + [len(tree.body)])
        for index, node in enumerate(tree.body):
            if first_setup <= index <= last_import and isinstance(node, (ast.Expr, ast.Import, ast.ImportFrom)):
                self.late.append((node, "\n".join(self.lines[node_start(self.lines, node) - 1 : node.end_lineno])))
                continue
            seg = "\n".join(self.lines[node_start(self.lines, node) - 1 : node.end_lineno])
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                self.imports.append((node, seg))
            elif isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                self.tests.append((node, seg))
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and node is tree.body[0]:
                continue  # module docstring
            elif isinstance(node, ast.Assign) and defined_names(node) == {"pytestmark"}:
                self.pytestmark = seg
            else:
                self.others.append((node, seg))
        self.by_name = {}
        for node, seg in self.others:
            for name in defined_names(node):
                self.by_name[name] = (node, seg)
        # Subscript assignments (TESTERS['x'] = ...) and bare expressions (registrations) always follow their base.
        self.trailing = [(n, s) for n, s in self.others if not defined_names(n)]

    def _add_dependencies(self, todo, need):
        """Add to `need` the other-nodes the nodes in `todo` read, transitively."""
        while todo:
            node = todo.pop()
            for name in names_used(node):
                if name in self.by_name and id(self.by_name[name][0]) not in need:
                    need.add(id(self.by_name[name][0]))
                    todo.append(self.by_name[name][0])

    def closure(self, roots):
        """Other-nodes (helpers, fixtures, constants) needed by the given nodes, transitively, in source order."""
        need = set()
        self._add_dependencies(list(roots), need)
        for node, _ in self.trailing:  # e.g. TESTERS[...] = ...: kept with what it extends
            if names_used(node) & {n for o, _ in self.others if id(o) in need for n in defined_names(o)}:
                need.add(id(node))
                self._add_dependencies([node], need)
        return [(n, s) for n, s in self.others if id(n) in need]


def imports_for(body_text, sources):
    """Import lines from the sources, pruned to the names the body uses, one line per module."""
    tree = ast.parse(body_text)
    used = set()
    for sub in ast.walk(tree):
        if isinstance(sub, ast.Name):
            used.add(sub.id)
    plain, froms = [], {}
    for source in sources:
        for node, _ in source.imports:
            for alias in node.names:
                bound = (alias.asname or alias.name).split(".")[0]
                if bound not in used and not (isinstance(node, ast.ImportFrom) and node.module == "__future__"):
                    continue
                text = alias.name + (f" as {alias.asname}" if alias.asname else "")
                if isinstance(node, ast.Import):
                    if f"import {text}" not in plain:
                        plain.append(f"import {text}")
                else:
                    names = froms.setdefault("." * node.level + (node.module or ""), [])
                    if text not in names:
                        names.append(text)
    lines = plain + [f"from {m} import {', '.join(n)}" for m, n in froms.items()]
    wrapped = []
    for line in lines:
        if len(line) > 120 and line.startswith("from"):
            head, names = line.split(" import ", 1)
            line = f"{head} import (\n" + "".join(f"    {n},\n" for n in names.split(", ")) + ")"
        wrapped.append(line)
    def group(line):
        mod = line.split()[1].split(".")[0]
        if mod == "__future__":
            return 0
        if mod in sys.stdlib_module_names:
            return 1
        if mod in ("modeling_florence", "conversion", "florence_testing", "conftest", "tests"):
            return 3
        return 2
    groups = defaultdict(list)
    for line in wrapped:
        groups[group(line)].append(line)
    return "\n\n".join("\n".join(sorted(groups[k], key=lambda l: (l.startswith("from"), l.lower()))) for k in sorted(groups))


def join_chunks(chunks):
    """Consecutive one-line statements (constants) stay together; definitions get two blank lines."""
    out = ""
    for index, chunk in enumerate(chunks):
        if index:
            short = "\n" not in chunk.strip() and "\n" not in chunks[index - 1].strip()
            out += "\n" if short else "\n\n\n"
        out += chunk
    return out


def late_block(source, body_text):
    """The source's sys.path set-up and late imports, pruned to what the body uses ([] when none is used)."""
    used = names_used(ast.parse(body_text))
    kept_imports, setup = [], []
    for node, seg in source.late:
        if isinstance(node, ast.Expr):
            setup.append(seg)
            continue
        keep = [a for a in node.names if (a.asname or a.name).split(".")[0] in used]
        if keep:
            names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in keep)
            head = f"import {names}" if isinstance(node, ast.Import) else f"from {'.' * node.level}{node.module} import {names}"
            kept_imports.append(head + "  # noqa: E402")
    return setup + kept_imports if kept_imports else []


def main(repo, dry):
    tests_dir = repo / "tests"
    plan = defaultdict(list)  # target -> [(source, test node, seg)]
    sources = {}
    targets = {t for d, o in MAP.values() for t in [d, *o.values()] if t and t != "DROP"}
    # a target file that already exists (new tests written beside the old layout) keeps its tests, first
    existing = {t: (t, {}) for t in sorted(targets) if (tests_dir / t).exists() and t not in MAP}
    for name, (default, overrides) in {**existing, **MAP}.items():
        path = tests_dir / name
        if not path.exists():
            print("missing source", name)
            continue
        source = sources[name] = Source(path)
        for node, seg in source.tests:
            target = overrides.get(node.name, default)
            if target == "DROP":
                print(f"drop {name}::{node.name}")
                continue
            if target is None:
                target = name
            plan[target].append((source, node, seg))
        unknown = set(overrides) - {n.name for n, _ in source.tests}
        if unknown:
            print("WARNING unknown overrides in", name, sorted(unknown))
    split_modules = {name[:-3] for name in MAP}
    forced = set()  # (source file, name) imported from a split source by some test file
    for path in tests_dir.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[-1] in split_modules:
                for alias in node.names:
                    forced.add((node.module.split(".")[-1] + ".py", alias.name))
    # which targets need each helper node
    users = defaultdict(set)
    for target, items in plan.items():
        for source, node, _ in items:
            for other, _ in source.closure([node]):
                users[(source.path.name, id(other))].add(target)
    shared_plain, shared_fix = [], []
    # names defined differently by two sources cannot share one module: such helpers are copied
    seen_defs, clashing = {}, set()
    for source in sources.values():
        for node, seg in source.others:
            for d in defined_names(node):
                if d in seen_defs and seen_defs[d] != seg:
                    clashing.add(d)
                seen_defs.setdefault(d, seg)
    files = {}
    for target, items in sorted(plan.items()):
        srcs = []
        for source, _, _ in items:
            if source not in srcs:
                srcs.append(source)
        helper_chunks, shared_names, seen = [], set(), set()
        for source in srcs:
            for other, seg in source.closure([n for s, n, _ in items if s is source]):
                key = (source.path.name, id(other))
                is_forced = any((source.path.name, d) in forced for d in defined_names(other))
                if (len(users[key]) > 1 or is_forced) and not is_fixture(other) and not (defined_names(other) & clashing):
                    if all(o is not other for _, o, _ in shared_plain):
                        shared_plain.append((source, other, seg))
                    shared_names |= defined_names(other)
                    continue
                if seg not in seen:
                    seen.add(seg)
                    helper_chunks.append(seg)
        marks = {s.pytestmark for s in srcs if s.pytestmark}
        tests_text = "\n\n\n".join([seg for _, _, seg in items])
        late_chunks = []
        for source in srcs:
            late_chunks += late_block(source, "\n\n\n".join(helper_chunks) + "\n" + tests_text)
        early = []
        if late_chunks:
            need = set().union(*(names_used(ast.parse(c)) for c in late_chunks))
            for name in sorted(need):
                for source in srcs:
                    if name in source.by_name:
                        seg = source.by_name[name][1]
                        if seg in helper_chunks:
                            helper_chunks.remove(seg)
                        if seg not in early:
                            early.append(seg)
        setup = "\n".join(early + late_chunks)
        body = join_chunks(([sorted(marks)[0]] if marks else []) + helper_chunks + [tests_text])
        imports = imports_for(body + "\n" + "\n".join(late_chunks), srcs)
        if shared_names & names_used(ast.parse(body)):
            imports += "\n\nfrom florence_testing import " + ", ".join(sorted(shared_names & names_used(ast.parse(body))))
        doc = f'"""{DOCS.get(target, "Tests.")}"""'
        text = f"{doc}\n\n{imports}\n\n{setup}\n\n\n{body}\n" if setup else f"{doc}\n\n{imports}\n\n\n{body}\n"
        files[target] = text
        defs = defaultdict(list)
        for chunk in helper_chunks:
            for n in ast.parse(chunk).body:
                for d in defined_names(n):
                    defs[d].append(chunk)
        for d, chunks in defs.items():
            if len(set(chunks)) > 1:
                print(f"CLASH in {target}: {d} defined differently by two sources")
    for source in sources.values():
        for node, seg in source.others:
            if any((source.path.name, d) in forced for d in defined_names(node)):
                for dep, dseg in source.closure([node]) + [(node, seg)]:
                    if all(o is not dep for _, o, _ in shared_plain):
                        shared_plain.append((source, dep, dseg))
    # shared modules
    if shared_plain:
        seen_names = {}
        chunks = []
        for source, node, seg in shared_plain:
            for d in defined_names(node):
                if d in seen_names and seen_names[d] != seg:
                    print(f"CLASH in florence_testing: {d}")
                seen_names[d] = seg
            if seg not in chunks:
                chunks.append(seg)
        body = join_chunks(chunks)
        srcs = list({s.path.name: s for s, _, _ in shared_plain}.values())
        files["florence_testing.py"] = f'"""Helpers shared by several test files: tiny configs, inputs and reference code."""\n\n{imports_for(body, srcs)}\n\n\n{body}\n'
    if shared_fix:
        conftest = (tests_dir / "conftest.py").read_text().rstrip()
        fix_chunks = []
        for source, node, seg in shared_fix:
            if seg not in fix_chunks and seg not in conftest:
                fix_chunks.append(seg)
        if fix_chunks:
            print("shared fixtures to conftest:", [ast.parse(c).body[0].name for c in fix_chunks])
            body = "\n\n\n".join(fix_chunks)
            srcs = list({s.path.name: s for s, _, _ in shared_fix}.values())
            extra = imports_for(body, srcs)
            files["conftest.py"] = conftest + "\n\n\n# Fixtures shared by several test files.\n" + extra + "\n\n\n" + body + "\n"
    pattern = re.compile(r"^from (?:tests\.)?(%s) import" % "|".join(sorted(split_modules)), re.M)
    for path in tests_dir.glob("*.py"):
        if path.name not in MAP and path.name not in files:
            text = path.read_text()
            if pattern.search(text):
                files[path.name] = text
    for target in list(files):
        files[target] = pattern.sub("from florence_testing import", files[target])
    for target in files:
        print(f"{target}: {len(plan.get(target, []))} tests")
    if dry:
        return
    for name in MAP:
        if (tests_dir / name).exists() and name not in files:
            (tests_dir / name).unlink()
    for target, text in files.items():
        (tests_dir / target).write_text(text)


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), "--dry" in sys.argv)
