"""The layering HACKING.md describes, checked on the built objects: within
one directory no two files call each other, directly or round a longer
loop, and the directories call only downwards (cli/ and daemon/ over
common/, cas/ and format/; cas/ over format/)."""
import collections
import os
import subprocess

import pytest

from conftest import BUILD

DIRS = ["format", "cas", "common", "daemon", "cli"]
# Which directories each may call into (besides itself).
BELOW = {
    "format": set(),
    "cas": {"format"},
    "common": {"format"},
    "daemon": {"format", "cas", "common"},
    "cli": {"format", "cas", "common"},
}


def symbols():
    """{dir: {source file: (defined, undefined)}} from the object files."""
    out = collections.defaultdict(dict)
    for d in DIRS:
        for root, _, files in os.walk(os.path.join(BUILD, d)):
            for f in files:
                if not f.endswith(".c.o"):
                    continue
                src = f[:-len(".c.o")]
                text = subprocess.run(["nm", os.path.join(root, f)], capture_output=True,
                                      text=True, check=True).stdout
                defined, undefined = set(), set()
                for line in text.splitlines():
                    parts = line.split()
                    if len(parts) == 3 and parts[1] in "TDBR":
                        defined.add(parts[2])
                    elif len(parts) == 2 and parts[0] == "U":
                        undefined.add(parts[1])
                old = out[d].get(src, (set(), set()))
                out[d][src] = (old[0] | defined, old[1] | undefined)
    return out


def loops(edges):
    """The strongly connected components of more than one file."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
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
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def syms():
    s = symbols()
    if not all(s.get(d) for d in ("format", "cas", "daemon", "cli")):
        pytest.fail(f"no object files under {BUILD}")
    return s


@pytest.mark.parametrize("d", ["format", "cas", "daemon", "cli", "common"])
def test_no_loop_between_files(syms, d):
    files = syms[d]
    edges = {a: set() for a in files}
    why = {}
    for a, (_, und) in files.items():
        for b, (defs, _) in files.items():
            if a != b and und & defs:
                edges[a].add(b)
                why[(a, b)] = sorted(und & defs)[:3]
    bad = loops(edges)
    detail = [[(a, b, why[(a, b)]) for a in comp for b in comp if (a, b) in why] for comp in bad]
    assert not bad, f"{d}/: files calling each other: {detail}"


def test_directories_call_only_downwards(syms):
    owner = {}
    for d, files in syms.items():
        for defs, _ in files.values():
            for s in defs:
                owner[s] = d
    bad = set()
    for d, files in syms.items():
        for src, (_, und) in files.items():
            for s in und:
                o = owner.get(s)
                if o and o != d and o not in BELOW[d]:
                    bad.add((f"{d}/{src}.c", s, o))
    assert not bad, sorted(bad)


def test_the_check_sees_a_loop():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert loops(edges) == [["a", "b", "c"]]
