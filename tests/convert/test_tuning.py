"""converter/convert/tuning.py: the malloc arena limit a command's process runs with."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# A child process: optionally limits the arenas, then has 12 threads allocate at the same time
# (each holds its memory until all have allocated) and prints the number of arenas glibc's
# malloc_info reports.
_CHILD = textwrap.dedent("""
    import ctypes, os, sys, tempfile, threading
    from converter.convert.tuning import limit_malloc_arenas
    if sys.argv[1] != "none":
        print(limit_malloc_arenas(cpus=int(sys.argv[1])))
    barrier = threading.Barrier(12)
    def work():
        held = [bytes(200_000) for _ in range(8)]
        barrier.wait()
        del held
    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "info.xml")
        f = libc.fopen(path.encode(), b"w")
        assert libc.malloc_info(0, f) == 0
        libc.fclose(f)
        print(open(path).read().count("<heap nr="))
""")


def _arenas(arg: str, **env: str) -> list[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", _CHILD, arg], env={**environ, **env}, check=True,
                         capture_output=True, text=True).stdout.split()
    return out


def test_the_arena_limit_bounds_the_arenas_threads_get() -> None:
    """Without the limit, 12 threads allocating at once get arenas of their own (more than 4);
    with 2 per CPU for 2 CPUs, glibc's malloc_info reports at most 4."""
    assert int(_arenas("none")[0]) > 4
    limited, arenas = _arenas("2")
    assert limited == "True"
    assert 1 <= int(arenas) <= 4


@pytest.mark.parametrize("env", [{"MALLOC_ARENA_MAX": "8"}, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=8"}])
def test_a_limit_the_user_set_is_left_alone(env: dict[str, str]) -> None:
    limited, arenas = _arenas("1", **env)
    assert limited == "False"
    assert int(arenas) > 2
