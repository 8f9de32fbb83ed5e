#!/usr/bin/env python3
"""Checks the crate's layout: no import cycle between modules (at the top level,
`crate::X`, and one level down, `crate::X::Y`), and no source file of 800 lines or
more. Reads `use crate::...` paths and `crate::...` references outside test modules.
Prints the dependency graph with -v. Exit 1 on a violation.

    scripts/check-layout.py [-v]
"""
import collections
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'src')
MAX_LINES = 800


def module_of(path, depth):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] == 'mod':
        rel = rel[:-1]
    if rel in (['lib'], ['main']) or rel[0] == 'cli':
        return None  # the crate root and the command sit above everything
    return '::'.join(rel[:depth])


def referenced_paths(text):
    """Every `crate::a::b` path, with `crate::{a, b::c}` groups expanded."""
    out = []
    for m in re.finditer(r'crate::(\{)?', text):
        if not m.group(1):
            rest = re.match(r'[\w:]+', text[m.end():])
            if rest:
                out.append(rest.group(0))
            continue
        i, level, start = m.end(), 1, m.end()
        while level:
            level += {'{': 1, '}': -1}.get(text[i], 0)
            i += 1
        level, item = 0, ''
        for ch in text[start:i - 1]:
            level += {'{': 1, '}': -1}.get(ch, 0)
            if ch == ',' and level == 0:
                out.append(item.strip())
                item = ''
            else:
                item += ch
        out.append(item.strip())
    return [p for p in out if p]


def modules():
    """Every module path of the crate (`model`, `model::event`, ...)."""
    found = set()
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith('.rs'):
                rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].split(os.sep)
                if rel[-1] == 'mod':
                    rel = rel[:-1]
                for i in range(1, len(rel) + 1):
                    found.add('::'.join(rel[:i]))
    return found


def graph(depth):
    known = modules()
    edges = collections.defaultdict(set)
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith('.rs'):
                continue
            path = os.path.join(folder, name)
            me = module_of(path, depth)
            if me is None:
                continue
            text = open(path, encoding='utf-8').read()
            cut = text.find('#[cfg(test)]\nmod tests')
            if cut >= 0:
                text = text[:cut]
            for ref in referenced_paths(text):
                parts = [re.sub(r'\W.*', '', p) for p in ref.split('::')]
                parts = [p for p in parts if p]
                # the longest prefix that is a module, cut at `depth`
                while parts and '::'.join(parts) not in known:
                    parts.pop()
                target = '::'.join(parts[:depth])
                if target and target != me:
                    edges[me].add(target)
    return edges


def cycles(edges):
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(edges) | {t for ts in edges.values() for t in ts}):
        if v not in index:
            visit(v)
    return found


def main():
    verbose = '-v' in sys.argv[1:]
    failed = False
    for depth in (1, 2):
        edges = graph(depth)
        if verbose:
            print(f'-- modules at depth {depth}')
            for m in sorted(edges):
                print(f'{m} -> {", ".join(sorted(edges[m]))}')
        for component in cycles(edges):
            failed = True
            print(f'import cycle between: {", ".join(component)}')
    for folder, _, files in os.walk(ROOT):
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith('.rs'):
                lines = sum(1 for _ in open(path, encoding='utf-8'))
                if lines >= MAX_LINES:
                    failed = True
                    print(f'{os.path.relpath(path, ROOT)}: {lines} lines (keep files under {MAX_LINES})')
    if not failed:
        print('layout: no import cycles; every file under 800 lines')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
