#!/usr/bin/env python3
"""Module dependency graph of a crate whose modules are the files of src/ (ferry-store):
an edge A -> B when A's non-test code names crate::B, or an item that lib.rs re-exports
from B (lib.rs itself: the items it defines, such as the Store trait). Prints the edges
and every cycle (a strongly connected component of more than one module); exits 1 if
there is one.

    python3 scripts/module-cycles.py crates/ferry-store/src
"""
import os, re, sys
src = sys.argv[1]
mods = {f[:-3] for f in os.listdir(src) if f.endswith('.rs') and f != 'lib.rs'}
lib = open(os.path.join(src, 'lib.rs')).read()
owner = {}
for m, names in re.findall(r'pub use (\w+)::\{?([^;}]*)\}?;', lib):
    for n in names.split(','):
        n = n.strip().split(' as ')[-1].strip()
        if n and m in mods:
            owner[n] = m
def strip_tests(text):
    i = text.find('#[cfg(test)]\nmod tests')
    return text if i < 0 else text[:i]
def refs(text):
    text = strip_tests(text)
    # drop comments
    text = re.sub(r'//[^\n]*', '', text)
    out = set()
    for block in re.findall(r'crate::\{([^}]*)\}', text):
        for n in re.findall(r'\b(\w+)\b', block):
            out.add(n)
    for n in re.findall(r'crate::(\w+)', text):
        out.add(n)
    return out
graph = {}
for m in sorted(mods | {'lib'}):
    path = os.path.join(src, 'lib.rs' if m == 'lib' else m + '.rs')
    text = open(path).read()
    if m == 'lib':
        text = re.sub(r'(pub )?mod \w+;', '', text)
        text = re.sub(r'pub use [^;]*;', '', text)
        text = re.sub(r'//[^\n]*', '', text)
        # names used in lib's own items (the Store trait's supertraits)
        deps = {owner[n] for n in re.findall(r'\b([A-Z]\w+)\b', text) if n in owner}
    else:
        deps = set()
        for n in refs(text):
            if n in mods: deps.add(n)
            elif n in owner: deps.add(owner[n])
            elif n in ('Store',): deps.add('lib')
    deps.discard(m)
    graph[m] = sorted(deps)
for m, d in graph.items():
    print(f'{m} -> {", ".join(d)}')
# Tarjan
index, low, stack, on, sccs, i = {}, {}, [], set(), [], [0]
def strong(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in graph.get(v, []):
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        sccs.append(comp)
for v in graph:
    if v not in index: strong(v)
cycles = [c for c in sccs if len(c) > 1]
print('cycles:', cycles if cycles else 'none')
sys.exit(1 if cycles else 0)
