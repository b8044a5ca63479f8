#!/usr/bin/env python3
"""Regenerates docs/kemi.md from the //! tables of src/kemi/<module>.rs."""
import os, re
os.chdir(os.path.join(os.path.dirname(__file__), '..'))
# The module list is DOC_SOURCES in src/kemi/exports.rs (which `sipshard kemi
# list` and its export test read too): one place to add a module.
ORDER = re.findall(r'\("(\w+)", include_str!', open('src/kemi/exports.rs').read())
out = ["# KSR reference\n",
       "Every `KSR` function sipshard exports, with its Kamailio-compatible signature\n"
       "(`int`/`bool`/`xval`/`void` and argument types as Kamailio's KEMI docs write\n"
       "them) and return values. Generated from the `//!` tables at the top of\n"
       "`src/kemi/<module>.rs`; keep those tables true and regenerate with\n"
       "`scripts/gen-kemi-doc.py`. `sipshard kemi list` prints the same\n"
       "signatures one a line (`int KSR.tm.t_relay()`), taken from the live KSR\n"
       "table, and a unit test (`kemi::exports`) fails when a live function has\n"
       "no row here or a row names no live function (row grammar: the top of\n"
       "`src/kemi/exports.rs`).\n",
       "Return conventions follow Kamailio's Lua binding: an `int` function returns\n"
       "the raw code (>0 success, <0 failure; 0 would stop a native Kamailio script,\n"
       "so sipshard never returns it), a `bool` function a Lua boolean, an `xval`\n"
       "function a string, an integer or nil. `KSR.x.exit()` stops the route like\n"
       "Kamailio's `exit`.\n"]
for m in ORDER:
    lines = []
    for line in open(f'src/kemi/{m}.rs').read().splitlines():
        if line.startswith('//! '):
            lines.append(line[4:])
        elif line.startswith('//!'):
            lines.append('')
        else:
            break
    out.append(f"\n## {m}\n\n" + "\n".join(lines).strip() + "\n")
# Hand-written: what differs from Kamailio 5.6 on purpose (tests/differential.rs).
out.append("\n" + open('docs/kemi-differences.md').read().strip() + "\n")
open('docs/kemi.md', 'w').write("\n".join(out))
