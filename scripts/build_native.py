"""Compile the per-entry modules (converter/native.py, MODULES) with mypyc, in place.

    python scripts/build_native.py [--clean]

Writes one extension module per listed module next to its source, their shared library as
``converter/_native__mypyc*.so``, the LZ4/LZMA extent loop ``converter/erofs/zloop.c`` as
``converter/erofs/_zloop.cdll`` (a plain C library that zcodec.py loads with ctypes), and
``converter/_native.json`` (the Python it was built for and the size and mtime of every source
file, the C one included), which ``converter.native`` checks before letting Python import a
compiled module or zcodec.py load the loop. Needs mypy (which carries mypyc), a C compiler and
the Python headers; ``make setup`` runs it. ``--clean`` removes what a build wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from converter import native  # noqa: E402 (after the path set-up)

GROUP = "converter._native"
LOOP_SOURCE = ROOT / "converter" / "erofs" / "zloop.c"


def clean() -> None:
    for path in (ROOT / "converter").rglob("*.so"):
        path.unlink()
    native.LOOP_LIBRARY.unlink(missing_ok=True)
    native.MANIFEST.unlink(missing_ok=True)


def build() -> None:
    from mypyc.build import mypycify  # the dev extra's mypy carries mypyc
    from setuptools import Extension, setup  # type: ignore[import-untyped]

    clean()
    sources = [str(ROOT.joinpath(*name.split(".")).with_suffix(".py").relative_to(ROOT)) for name in native.MODULES]
    # mypyc compiles with -Werror: keep it. A "may be used uninitialized" warning was a real
    # crash (a tuple membership test in tarstream's _pax_sparse: a segfault on a PAX sparse
    # member), so the code is written around such warnings, never the warning switched off.
    before = native.fingerprint()
    with tempfile.TemporaryDirectory(prefix="erofs-native-") as tmp:
        cwd = Path.cwd()
        os.chdir(ROOT)
        try:
            # zloop.c is a plain C library for ctypes (converter/erofs/zcodec.py), built the
            # same way as an extension module and renamed below.
            loop = Extension("converter.erofs._zloop", [str(LOOP_SOURCE.relative_to(ROOT))],
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"])
            setup(name="erofs-converter-native", packages=[],
                  ext_modules=[*mypycify(sources, opt_level="3", group_name=GROUP, target_dir=str(Path(tmp) / "c")),
                               loop],
                  script_args=["build_ext", "--inplace", "--build-temp", str(Path(tmp) / "o")])
        finally:
            os.chdir(cwd)
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    built = ROOT / "converter" / "erofs" / ("_zloop" + native.python_tag())
    os.replace(built, native.LOOP_LIBRARY)
    if native.fingerprint() != before:
        raise SystemExit("build_native: the sources changed during the build; run it again")
    native.MANIFEST.write_text(json.dumps({"python": native.python_tag(), "sources": before},
                                          indent=1, sort_keys=True) + "\n")
    print(f"build_native: compiled {len(sources)} modules ({', '.join(native.MODULES)}) and "
          f"{LOOP_SOURCE.relative_to(ROOT)}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", action="store_true", help="remove the compiled modules and the manifest")
    args = parser.parse_args()
    if args.clean:
        clean()
    else:
        build()


if __name__ == "__main__":
    main()
