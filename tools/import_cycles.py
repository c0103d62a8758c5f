#!/usr/bin/env python3
"""Import cycles between the crate's modules (docs/architecture.md: arrows follow the data flow).

Builds the import graph from `use crate::`/`use super::` and inline `crate::` paths (comments and
inline test modules skipped) and prints two-way pairs and larger cycles at two levels: top-level
modules, and file modules. Exits 1 when there is a cycle. A reading of the text, not of the
compiler's resolution: good enough to keep the structure honest (tests/properties/architecture.rs runs it).

Usage: python3 tools/import_cycles.py [src] [--tests] [--edges]"""
import os, re, sys
root = ([a for a in sys.argv[1:] if not a.startswith('--')] or ['src'])[0]
mods = {}  # module path tuple -> file
for d, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith('.rs'): continue
        p = os.path.relpath(os.path.join(d, f), root)[:-3].split(os.sep)
        if p[-1] in ('mod', 'lib', 'main'): p = p[:-1]
        if 'tests' in p and '--tests' not in sys.argv: continue  # test-only modules
        mods[tuple(p)] = os.path.join(d, f)
def resolve(segs):
    for n in range(len(segs), 0, -1):
        if tuple(segs[:n]) in mods: return tuple(segs[:n])
    return None
def expand(s):
    # expand "a::{b, c::{d}}" into paths
    s = s.strip()
    m = re.match(r'^(.*?)\{(.*)\}$', s, re.S)
    if not m: return [s]
    pre, body = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ''
    for ch in body:
        if ch == '{': depth += 1
        if ch == '}': depth -= 1
        if ch == ',' and depth == 0: parts.append(cur); cur = ''
        else: cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        if p.strip(): out += [pre + q for q in expand(p)]
    return out
edges = set()
for mod, f in mods.items():
    src = open(f).read()
    src = re.sub(r'^\s*//.*$', '', src, flags=re.M)
    if '--tests' not in sys.argv:
        src = re.split(r'#\[cfg\(test\)\]\s*mod\s+\w+\s*\{', src)[0]  # inline test modules (at the end of files)
    base = list(mod) if not f.endswith(('mod.rs', 'lib.rs')) else list(mod)
    refs = []
    for m in re.finditer(r'\buse\s+((?:crate|super|self)::[^;]*);', src, re.S):
        refs += expand(re.sub(r'\s+', '', m.group(1)))
    for m in re.finditer(r'(?<![\w:])((?:crate|super)(?:::\w+)+)', src):
        refs.append(m.group(1))
    for r in refs:
        segs = [x for x in r.split('::') if x]
        if segs[0] == 'crate': segs = segs[1:]
        else:
            cur = list(mod) if f.endswith(('mod.rs',)) else list(mod)
            # in a file module `a/b.rs`, self = a::b, super = a
            while segs and segs[0] in ('super', 'self'):
                if segs[0] == 'super': cur = cur[:-1]
                segs = segs[1:]
            segs = cur + segs
        segs = [x.split(' as ')[0] for x in segs if x not in ('self', '*')]
        t = resolve(segs)
        if t and t != mod and not (len(t) < len(mod) and mod[:len(t)] == t):
            edges.add((mod, t))
def cycles(es):
    g = {}
    for a, b in es: g.setdefault(a, set()).add(b)
    found = set()
    for a, b in es:
        if (b, a) in es and a < b: found.add(f'{"::".join(a)} <-> {"::".join(b)}')
    # longer cycles by SCC (Tarjan)
    idx, low, st, on, sccs, i = {}, {}, [], set(), [], [0]
    def sc(v):
        idx[v] = low[v] = i[0]; i[0] += 1; st.append(v); on.add(v)
        for w in g.get(v, ()):
            if w not in idx: sc(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            c = []
            while True:
                w = st.pop(); on.discard(w); c.append(w)
                if w == v: break
            if len(c) > 1: sccs.append(sorted('::'.join(x) for x in c))
    sys.setrecursionlimit(10000)
    for v in list(g):
        if v not in idx: sc(v)
    return sorted(found), sccs
top = {(a[:1], b[:1]) for a, b in edges if a[:1] != b[:1]}
status = 0
print(f'file modules: {len(mods)}, arrows between file modules: {len(edges)}, between top-level modules: {len(top)}')
for name, es in (('top-level', top), ('file-level', edges)):
    pairs, sccs = cycles(es)
    print(f'{name} two-way pairs: {pairs or "none"}')
    print(f'{name} strongly connected groups (cycles): {sccs or "none"}')
    # within-parent siblings (e.g. schedule::throttle <-> schedule::cluster)
    if pairs or sccs:
        status = 1
if '--edges' in sys.argv:
    for a, b in sorted(edges): print('  ', '::'.join(a), '->', '::'.join(b))
sys.exit(status)
