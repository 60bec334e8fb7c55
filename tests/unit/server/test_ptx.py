"""The sim backend's PTX reader is total and linear (issue 15, item 8): any text gives entries or
a ValueError, never another exception, and large hostile inputs take time linear in their size."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orion_virt.cuda_enums import CUresult
from orion_virt.server import ptx
from orion_virt.server.backend import CudaCallError, ParamSlot
from orion_virt.server.sim import SimSession

GOOD = """.version 8.0
.target sm_80
.visible .entry vadd(
    .param .u64 .ptr .global .align 8 a,
    .param .align 16 .b8 s[24],
    .param .u32 n
)
{ ret; }
"""

FUZZ_EXAMPLES = 3000
"""hypothesis examples per strategy (two strategies: random text and mutated PTX)"""


def test_good_layout():
    assert ptx.entries(GOOD) == {"vadd": [ParamSlot(0, 8), ParamSlot(16, 24), ParamSlot(40, 4)]}


@pytest.mark.parametrize("text", [
    ".entry k(.param .align 0 .u32 a)",            # the worker crash of the adversarial run
    ".entry k(.param .align 3 .u32 a)",
    ".entry k(.param .align 99999999 .u32 a)",
    ".entry k(.param .u8 a[0])",
    ".entry k(.param .u8 a[999999999])",
    ".entry k(.param .u32 a",                       # never closed
    ".entry k(.param .banana a)",
])
def test_hostile_parameters_are_value_errors(text):
    with pytest.raises(ValueError):
        ptx.entries(text)


def _timed(text: str) -> float:
    t = time.perf_counter()
    try:
        ptx.entries(text)
    except ValueError:
        pass
    return time.perf_counter() - t


@pytest.mark.parametrize("unit", [
    ".entry k(.param .u32 a)\n",                   # repeated entries (72 KB took 2.7 s)
    ".entry k(",                                    # unclosed lists: the old regex rescanned to the end
    ".entry k(.param .u32 a,",
    ".entry ",
    ".param .align 8 .u64 .ptr .global .global .global",
])
def test_linear_in_size(unit):
    small, big = unit * (64_000 // len(unit)), unit * (1_024_000 // len(unit))
    t_small, t_big = _timed(small), _timed(big)
    assert t_big < 2.0, f"{len(big)} characters took {t_big:.2f}s"
    assert t_big < 40 * t_small + 0.05, (t_small, t_big)  # 16x the input, not 256x the time


def _check(text: str) -> None:
    try:
        out = ptx.entries(text)
    except ValueError:
        return
    for slots in out.values():
        assert all(s.size > 0 and s.offset >= 0 for s in slots)
        assert sum(s.size for s in slots) <= ptx.MAX_PARAM_BYTES


_PIECES = st.sampled_from([".entry", " ", "\n", "(", ")", ",", ".param", ".align", "0", "8", "16",
                           "3", ".u32", ".b8", ".u64", ".ptr", ".global", "a", "k", "[", "]",
                           "999999999999", "\0", "é"])


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_PIECES, max_size=60).map("".join))
def test_fuzz_token_soup(text):
    _check(text)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, len(GOOD)), st.integers(0, 40), st.text(max_size=20))
def test_fuzz_mutated_ptx(at, cut, insert):
    _check(GOOD[:at] + insert + GOOD[at + cut:])


@pytest.mark.parametrize("image", [
    b".version 8.0\n.entry k(.param .align 0 .u32 a)\n",
    b".version 8.0\n" + b".entry k(" * 10_000,
    b".version 8.0\n\xff\xfe.entry k()",
])
def test_sim_module_load_answers_invalid_image(image):
    with pytest.raises(CudaCallError) as e:
        SimSession([]).module_load(image)
    assert e.value.code == CUresult.CUDA_ERROR_INVALID_IMAGE
