#!/usr/bin/env python3
"""The module graph of the crate, from its source: which module uses which.

Reads every `.rs` file under src/, takes the paths each one names (`use crate::..`,
`use super::..`, `use self::..` and inline `crate::a::b` paths in code; comments are skipped),
resolves each to the module that defines the item (following `pub use` re-exports, so that
`crate::Pruner` counts as a use of `prune::pruner`), and prints one line per module:

    checkpoint::archive -> checkpoint::error, checkpoint::host_tensor, checkpoint::sniff

It exits with status 1, saying why, if the graph has a cycle or an edge goes up the layers
(LAYERS below: the file formats in `checkpoint` use nothing else of the crate; the C++ boundary
`ffi` uses only the error types; the pruning core does not use the model layer; nothing in the
library uses the binary).

    scripts/module_graph.py                      print the graph
    scripts/module_graph.py --check FILE         also fail unless FILE holds the graph as printed
    scripts/module_graph.py --write FILE         replace the graph held in FILE

In FILE the graph sits between the lines `<!-- module-graph -->` and `<!-- /module-graph -->`.
A parent module declaring its children (`mod x;`) is not an edge; its `use self::x::..` is.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

# Bottom up; a module may use modules of its own layer or of lower ones. The first prefix that
# matches a module's path gives its layer.
LAYERS = [
    ("checkpoint", 0),
    ("error", 1),
    ("ffi", 2),  # every call into the crate's C++ (src/ffi/)
    ("distributed", 2),  # process groups: c10d through ffi, below the pruning that uses them
    ("prune", 3),
    ("model", 4),
    ("crate", 5),  # lib.rs: re-exports only
    ("train", 5),  # namespaces by job, re-exports only
    ("shrink", 5),
    ("bin", 6),  # the tch-prune binary, a crate of its own over the library
]

BEGIN, END = "<!-- module-graph -->", "<!-- /module-graph -->"


def module_of(path: Path) -> str:
    """`src/checkpoint/archive.rs` -> `checkpoint::archive`; the binary's files -> `bin::..`."""
    rel = path.relative_to(SRC)
    parts = list(rel.with_suffix("").parts)
    if parts[0] == "bin":
        parts = ["bin"] + parts[2:]  # src/bin/tch-prune/plan.rs -> bin::plan
        if parts[-1] == "main":
            parts.pop()
        return "::".join(parts)
    if parts == ["lib"]:
        return "crate"
    if parts[-1] == "mod":
        parts.pop()
    return "::".join(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    lines = []
    for line in text.splitlines():
        # Drops `// ...` (and doc comments); string literals holding `//` are rare enough in
        # paths' lines not to matter, and a path inside a string is no dependency anyway.
        lines.append(re.sub(r"//.*", "", line))
    text = "\n".join(lines)
    # Visibility (`pub(in crate::a)`) names a module without using it.
    text = re.sub(r"\bpub\s*\(\s*in\s+[\w:]+\s*\)", "pub", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def use_trees(text: str):
    """Every `use` declaration's tree, as one string without whitespace."""
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        # `x as y` names x: the rename is dropped before the whitespace.
        tree = re.sub(r"\s+as\s+\w+", "", m.group(1))
        yield re.sub(r"\s+", "", tree)


def expand(tree: str):
    """`a::{b,c::{d,e}}` -> `a::b`, `a::c::d`, `a::c::e` (globs kept as paths)."""
    depth, start = 0, None
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
    if start is None:
        yield tree
        return
    prefix = tree[:start]
    inner = tree[start + 1 : tree.rindex("}")]
    items, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    items.append(cur)
    for item in items:
        if item:
            for sub in expand(item):
                yield prefix + sub


def main() -> int:
    files = sorted(SRC.rglob("*.rs"))
    modules = {module_of(f): f for f in files}
    is_dir_module = {m: f.name in ("mod.rs", "lib.rs", "main.rs") for m, f in modules.items()}
    texts = {m: strip_comments(f.read_text()) for m, f in modules.items()}
    # `#[path = "file.rs"] mod name;`: the module `name` is that file's module (the binary
    # compiles the library's leaf `checkpoint/text.rs` this way).
    aliases = {}
    for m, f in modules.items():
        for am in re.finditer(r'#\[path\s*=\s*"([^"]+)"\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;', f.read_text()):
            target = module_of((f.parent / am.group(1)).resolve())
            parent = m if is_dir_module[m] else "::".join(m.split("::")[:-1])
            aliases[f"{parent}::{am.group(2)}" if parent else am.group(2)] = target

    def absolute(module: str, path: str):
        """A path as seen from `module`, made absolute (`None`: not a path into this crate)."""
        segs = [s for s in path.split("::") if s]
        if not segs:
            return None
        crate_root = "bin" if module.startswith("bin") else "crate"
        if segs[0] == "crate":
            base, segs = [], segs[1:]
            if crate_root == "bin":
                base = ["bin"]
        elif segs[0] in ("self", "super"):
            base = module.split("::") if module not in ("crate",) else []
            if module == "crate":
                base = []
            # In `a/mod.rs`, `self` is `a`; in `a/b.rs` too is `self` `a::b`.
            while segs and segs[0] in ("self", "super"):
                if segs[0] == "super":
                    base = base[:-1]
                segs = segs[1:]
            if base == ["bin"] or (crate_root == "bin" and not base):
                base = ["bin"]
        elif crate_root == "bin" and segs[0] == "tch_prune":
            base, segs = [], segs[1:]  # the binary using the library
        else:
            # A path relative to the current module (2018 edition): one of its child modules.
            here = [] if module == "crate" else module.split("::")
            if "::".join(here + segs[:1]) not in modules:
                return None
            base = here
        return base, segs

    # `pub use` re-exports: (module, name) -> the path it re-exports.
    reexports = {}
    for m, text in texts.items():
        for pm in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", text):
            tree = re.sub(r"\s+", "", re.sub(r"\s+as\s+\w+", "", pm.group(1)))
            for path in expand(tree):
                resolved = absolute(m, path)
                if resolved is None:
                    continue
                base, segs = resolved
                name = segs[-1] if segs else None
                if name and name != "*":
                    reexports[(m, name)] = base + segs

    def resolve(parts):
        """The module defining the item at absolute `parts` (a list of segments)."""
        seen = set()
        while True:
            for alias, target in aliases.items():
                n = alias.count("::") + 1
                if "::".join(parts[:n]) == alias:
                    parts = target.split("::") + parts[n:]
            key = "::".join(parts)
            if key in seen:
                return None
            seen.add(key)
            # The longest prefix that is a module.
            for n in range(len(parts), -1, -1):
                mod = "::".join(parts[:n]) if n else "crate"
                if parts[:1] == ["bin"] and n == 0:
                    mod = None
                if mod in modules:
                    break
            else:
                return None
            if mod is None:
                return None
            rest = parts[n:]
            owner = "crate" if mod == "crate" else mod
            if rest and (owner, rest[0]) in reexports:
                parts = reexports[(owner, rest[0])] + rest[1:]
                continue
            return mod

    def scopes(module: str, text: str):
        """`(scope, text)` for the file's own text and for each inline `mod name { .. }` in it
        (a test module, mostly), whose `super` is the file's module."""
        own, i = [], 0
        inner = []
        for im in re.finditer(r"\bmod\s+(\w+)\s*\{", text):
            if im.start() < i:
                continue
            depth, j = 0, im.end() - 1
            while j < len(text):
                depth += text[j] == "{"
                depth -= text[j] == "}"
                if depth == 0:
                    break
                j += 1
            own.append(text[i : im.start()])
            inner.append((f"{module}::{im.group(1)}", text[im.end() : j]))
            i = j + 1
        own.append(text[i:])
        yield module, "".join(own)
        for scope, body in inner:
            yield from scopes(scope, body)

    edges = {m: set() for m in modules}
    for m, text in texts.items():
        for scope, body in scopes(m, text):
            paths = []
            for tree in use_trees(body):
                paths.extend(expand(tree))
            # Inline paths in code: `crate::a::b::c(...)`, `super::x::Y`.
            for im in re.finditer(r"(?<![\w:])((?:crate|super|self)(?:::\w+)+)", body):
                paths.append(im.group(1))
            for path in paths:
                resolved = absolute(scope, path)
                if resolved is None:
                    continue
                base, segs = resolved
                target = resolve(base + segs)
                if target and target != m:
                    edges[m].add(target)
        if m.startswith("bin") and re.search(r"\btch_prune::", text):
            edges[m].add("crate")

    problems = []

    def layer(m: str) -> int:
        for prefix, rank in LAYERS:
            if m == prefix or m.startswith(prefix + "::"):
                return rank
        return LAYERS[-2][1]

    for m, targets in edges.items():
        for t in targets:
            if m == "crate" or (m.startswith("bin") and t == "crate"):
                continue
            if layer(t) > layer(m):
                problems.append(f"layering: {m} uses {t}, which is in a higher layer")

    # Cycles, by depth-first search (the lib root only re-exports, so it is left out).
    graph = {m: sorted(t for t in ts if t != "crate") for m, ts in edges.items() if m != "crate"}
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in graph.get(m, []):
            if state.get(t) == 1:
                cycle = stack[stack.index(t) :] + [t]
                problems.append("cycle: " + " -> ".join(cycle))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    sys.setrecursionlimit(10000)
    for m in sorted(graph):
        if m not in state:
            visit(m)

    def sort_key(m):
        return (layer(m), m)

    lines = []
    for m in sorted(edges, key=sort_key):
        if m == "crate":
            continue
        targets = sorted(edges[m], key=sort_key)
        lines.append(f"{m} -> {', '.join(targets) if targets else '(nothing)'}")
    graph_text = "\n".join(lines) + "\n"

    args = sys.argv[1:]
    if args[:1] == ["--write"] and len(args) == 2:
        doc = Path(args[1])
        text = doc.read_text()
        if BEGIN not in text or END not in text:
            print(f"{doc}: no {BEGIN} ... {END} block to write the graph into", file=sys.stderr)
            return 1
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        doc.write_text(f"{head}{BEGIN}\n```text\n{graph_text}```\n{END}{tail}")
    elif args[:1] == ["--check"] and len(args) == 2:
        doc = Path(args[1])
        text = doc.read_text()
        block = f"{BEGIN}\n```text\n{graph_text}```\n{END}"
        if block not in text:
            problems.append(
                f"{doc}: its module graph is not the current one: run scripts/module_graph.py --write {doc}"
            )
    elif args:
        print(__doc__, file=sys.stderr)
        return 2
    else:
        sys.stdout.write(graph_text)

    for p in problems:
        print(f"module_graph: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
