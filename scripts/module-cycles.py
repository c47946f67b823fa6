#!/usr/bin/env python3
"""Module dependency graph of a crate whose modules are the files of src/ (a module's
own directory, src/NAME/*.rs, counts as part of NAME): an edge A -> B when A's non-test
code names crate::B, or an item lib.rs re-exports from B; `lib` stands for the items
lib.rs itself defines (the store's Store trait, the server's Server). Test code is left
out: `#[cfg(test)] mod tests { ... }` blocks, and files lib.rs or a module includes only
under #[cfg(test)] (`*_tests.rs`, the test harness). Prints the edges and every cycle (a
strongly connected component of more than one module); exits 1 if there is one.

    python3 scripts/module-cycles.py crates/ferry-store/src
    python3 scripts/module-cycles.py crates/ferry-server/src
"""
import os, re, sys

src = sys.argv[1]
lib = open(os.path.join(src, 'lib.rs')).read()
# Modules declared only for tests (`#[cfg(test)] mod testing;`) are not part of the graph.
test_only = set(re.findall(r'#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))? )?mod (\w+);', lib))
mods = {f[:-3] for f in os.listdir(src) if f.endswith('.rs') and f != 'lib.rs'} - test_only
mods = {m for m in mods if not m.endswith('_tests')}


def strip_comments(text):
    return re.sub(r'//[^\n]*', '', text)


def strip_tests(text):
    """Drops `#[cfg(test)] mod tests { ... }` (to the end of the file, where it lives) and
    `#[cfg(test)] ... mod x;` declarations."""
    text = re.sub(r'#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))? )?mod \w+;', '', text)
    m = re.search(r'#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))? )?mod \w+ \{', text)
    return text if m is None else text[:m.start()]


def module_text(m):
    """A module's file and the files of its own directory (src/m/*.rs)."""
    parts = [open(os.path.join(src, m + '.rs')).read()]
    sub = os.path.join(src, m)
    if os.path.isdir(sub):
        for f in sorted(os.listdir(sub)):
            if f.endswith('.rs') and not f.endswith('_tests.rs'):
                parts.append(open(os.path.join(sub, f)).read())
    return '\n'.join(strip_tests(strip_comments(p)) for p in parts)


# Items lib.rs re-exports, by the module that defines them; items lib.rs defines itself.
owner = {}
for m, names in re.findall(r'pub use (\w+)::\{?([^;}]*)\}?;', lib):
    for n in names.split(','):
        n = n.strip().split(' as ')[-1].strip()
        if n and m in mods:
            owner[n] = m
lib_own = strip_tests(strip_comments(lib))
lib_own = re.sub(r'(?:pub(?:\([^)]*\))? )?mod \w+;', '', lib_own)
lib_own = re.sub(r'pub use [^;]*;', '', lib_own)
lib_items = set(re.findall(r'\b(?:struct|trait|enum|fn|type|const|static)\s+(\w+)', lib_own))


def refs(text):
    out = set()
    for block in re.findall(r'crate::\{([^}]*)\}', text):
        out.update(re.findall(r'\b(\w+)\b', block))
    out.update(re.findall(r'crate::(\w+)', text))
    return out


def deps_of(names, own):
    deps = set()
    for n in names:
        if n in mods:
            deps.add(n)
        elif n in owner:
            deps.add(owner[n])
        elif n in lib_items:
            deps.add('lib')
    deps.discard(own)
    return deps


graph = {}
for m in sorted(mods):
    graph[m] = sorted(deps_of(refs(module_text(m)), m))
# lib's own items: the re-exported names they use (the Store trait's supertraits), crate::
# paths, and module paths (`admin::router`).
lib_uses = {n for n in re.findall(r'\b(\w+)\b', lib_own) if n in owner}
lib_uses |= refs(lib_own) | {m for m in mods if re.search(r'\b' + m + r'::', lib_own)}
graph['lib'] = sorted(deps_of(lib_uses, 'lib'))
for m, d in graph.items():
    print(f'{m} -> {", ".join(d)}')
# Tarjan
index, low, stack, on, sccs, i = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10_000)


def strong(v):
    index[v] = low[v] = i[0]
    i[0] += 1
    stack.append(v)
    on.add(v)
    for w in graph.get(v, []):
        if w not in index:
            strong(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        sccs.append(comp)


for v in graph:
    if v not in index:
        strong(v)
cycles = [sorted(c) for c in sccs if len(c) > 1]
print('cycles:', cycles if cycles else 'none')
sys.exit(1 if cycles else 0)
