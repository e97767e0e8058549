import platform

import pytest

from pf_envs.heap import trim_heap


def test_trim_heap_runs_everywhere():
    assert trim_heap() in (True, False)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_trim_heap_on_glibc():
    assert trim_heap() is True
