#!/usr/bin/env python3
"""How many of Kamailio's KEMI functions of each module sipshard exports.

Reads the `sr_kemi_t` export tables of a Kamailio source tree (a git
repository, e.g. a `fetch` mirror; nothing of it is copied) at a given ref
and compares them with `sipshard kemi list`.

    scripts/kemi-coverage.py REPO REF module[,module...]
    scripts/kemi-coverage.py /work/.mirror/kamailio+kamailio/repo 5.6.6 dispatcher,dialog,textops
"""
import re
import subprocess
import sys


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    repo, ref, mods = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    bin_ = "target/debug/sipshard"
    listed = subprocess.run([bin_, "kemi", "list"], capture_output=True, text=True, check=True).stdout
    ours = {m.group(1) for m in re.finditer(r"KSR\.([\w.]+)\(", listed)}
    files = subprocess.run(["git", "-C", repo, "ls-tree", "-r", "--name-only", ref, "src/modules/"],
                           capture_output=True, text=True, check=True).stdout.split()
    for mod in mods:
        src = "".join(
            subprocess.run(["git", "-C", repo, "show", f"{ref}:{f}"], capture_output=True, text=True).stdout
            for f in files if f.startswith(f"src/modules/{mod}/") and f.endswith(".c"))
        names = set()
        for m in re.finditer(r'\{\s*str_init\("(\w*)"\)\s*,\s*str_init\("(\w+)"\)', src):
            kmod, fn = m.groups()
            names.add(f"{kmod}.{fn}" if kmod else fn)
        missing = sorted(n for n in names if n not in ours)
        print(f"{mod}: kamailio {len(names)}, sipshard {len(names) - len(missing)}; missing: {', '.join(missing)}")


if __name__ == "__main__":
    main()
