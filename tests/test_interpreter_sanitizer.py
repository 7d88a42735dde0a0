"""The interpreter sanitizer (tests/interpreter_sanitizer.py) catches what a GPU would show as a
fault, garbage or a run-to-run difference, and lets correct kernels through. Each faulty kernel here
is a small version of a real mistake: a missing mask, a contiguity assumption, a shared output."""
from __future__ import annotations

import os

import pytest
import torch

from interpreter_sanitizer import MemoryAccessError, sanitize

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="checks the Triton interpreter (TRITON_INTERPRET=1)")

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")


@triton.jit
def _copy(x_ptr, y_ptr, n, stride_row, n_cols, MASKED: tl.constexpr, BLOCK: tl.constexpr):
    """y[i] = x[row(i), col(i)] for a (rows, n_cols) x with row stride stride_row; MASKED=False is the bug."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    src = (i // n_cols) * stride_row + i % n_cols
    if MASKED:
        tl.store(y_ptr + i, tl.load(x_ptr + src, mask=i < n), mask=i < n)
    else:
        tl.store(y_ptr + i, tl.load(x_ptr + src), mask=i < n)


@triton.jit
def _copy_two(x_ptr, other_ptr, y_ptr, BLOCK: tl.constexpr):
    """y[:16] = x[:16], with x only 13 long (the bug: no mask); other_ptr is a second input, unused."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + i, tl.load(x_ptr + i))


@triton.jit
def _masked_sum(x_ptr, y_ptr, n, OTHER: tl.constexpr, BLOCK: tl.constexpr):
    """y = sum of x[:n] through a masked load; OTHER=False (no `other=0.0`) sums undefined lanes."""
    i = tl.arange(0, BLOCK)
    if OTHER:
        v = tl.load(x_ptr + i, mask=i < n, other=0.0)
    else:
        v = tl.load(x_ptr + i, mask=i < n)
    tl.store(y_ptr, tl.sum(v, axis=0))


@triton.jit
def _sum_into_first(x_ptr, y_ptr, BLOCK: tl.constexpr):
    """Every program stores its block's sum to y[0] (the bug: no atomics, no per-program slot)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr, tl.sum(tl.load(x_ptr + i), axis=0))


@triton.jit
def _shift_left_in_place(x_ptr, BLOCK: tl.constexpr):
    """x[i] = x[i + 1] in place: program p reads the first element that program p + 1 writes."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(x_ptr + i, tl.load(x_ptr + i + 1))


@triton.jit
def _lanes_into_one(y_ptr, BLOCK: tl.constexpr):
    """Every lane of one store writes its own index to y[0]."""
    tl.store(y_ptr + tl.arange(0, BLOCK) * 0, tl.arange(0, BLOCK).to(tl.float32))


@triton.jit
def _reverse_through_scratch(x_ptr, scratch_ptr, y_ptr, BLOCK: tl.constexpr, FENCED: tl.constexpr):
    """y = x reversed, through a scratch buffer that lane i writes and lane BLOCK - 1 - i reads back:
    another thread's store, so a barrier must lie between (FENCED=False is the bug)."""
    i = tl.arange(0, BLOCK)
    tl.store(scratch_ptr + i, tl.load(x_ptr + i))
    if FENCED:
        tl.debug_barrier()
    tl.store(y_ptr + i, tl.load(scratch_ptr + BLOCK - 1 - i))


@triton.jit
def _store_in_helper(ptrs, value):
    tl.store(ptrs, value)


@triton.jit
def _fill_through_helper(y_ptr, BLOCK: tl.constexpr):
    """y[i] = i through a @triton.jit helper, as the kernels' _store/_load/_assign helpers do (the
    bug: no mask, so the last program writes past y)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    _store_in_helper(y_ptr + i, i.to(tl.float32))


def test_correct_kernels_pass_at_odd_sizes_and_views():
    with sanitize():
        for rows, cols in [(1, 1), (3, 5), (7, 13)]:
            x = torch.randn(rows, cols)
            y = torch.full((rows * cols,), float("nan"))
            _copy[(triton.cdiv(rows * cols, 8),)](x, y, rows * cols, cols, cols, MASKED=True, BLOCK=8)
            assert torch.equal(y, x.flatten())
        wide = torch.randn(5, 9)
        view = wide[:, 2:6]  # gaps between rows, a storage offset
        y = torch.full((20,), float("nan"))
        _copy[(3,)](view, y, 20, 9, 4, MASKED=True, BLOCK=8)
        assert torch.equal(y, view.flatten())
        empty = torch.empty(0)
        _copy[(0,)](empty, empty, 0, 1, 1, MASKED=True, BLOCK=8)


def test_a_read_past_the_end_is_caught():
    x, y = torch.randn(13), torch.empty(13)
    with sanitize(), pytest.raises(MemoryAccessError, match=r"_copy, program \(1, 0, 0\).*load.*element 13 of argument 'x_ptr'"):
        _copy[(2,)](x, y, 13, 13, 13, MASKED=False, BLOCK=8)


def test_a_read_in_a_gap_of_a_strided_view_is_caught():
    """Treating x[:, :4] of a (5, 9) tensor as contiguous reads elements of the columns it left out,
    all within the view's span: only the element check sees it."""
    view = torch.randn(5, 9)[:, :4]
    y = torch.empty(20)
    with sanitize(), pytest.raises(MemoryAccessError, match="load.*argument 'x_ptr'"):
        _copy[(3,)](view, y, 20, 4, 4, MASKED=True, BLOCK=8)


def test_a_read_running_from_one_tensor_into_the_next_is_caught():
    """Two arguments that are neighbouring slices of one buffer: reading past the first lands on
    elements of the second, legal addresses one by one, but one access may not span two tensors."""
    buffer = torch.randn(26)
    x, other, y = buffer[:13], buffer[13:], torch.empty(16)
    with sanitize(), pytest.raises(MemoryAccessError, match=r"reaches into several tensors \('x_ptr', 'other_ptr'\)"):
        _copy_two[(2,)](x, other, y, BLOCK=8)


def test_programs_storing_one_address_is_a_race():
    x, y = torch.randn(32), torch.empty(1)
    with sanitize(), pytest.raises(MemoryAccessError, match=r"write-write race, programs \[0, 1, 2, 3\].*element 0 of argument 'y_ptr'"):
        _sum_into_first[(4,)](x, y, BLOCK=8)
    with sanitize():  # one program alone is fine
        _sum_into_first[(1,)](x, y, BLOCK=8)
    assert torch.allclose(y, x[:8].sum())


def test_reading_what_another_program_writes_is_a_race():
    x = torch.randn(17)
    with sanitize(), pytest.raises(MemoryAccessError, match="read-write race, program 0 loads element 8 of argument 'x_ptr'.*program 1 stores"):
        _shift_left_in_place[(2,)](x, BLOCK=8)


def test_one_store_writing_two_values_to_one_address_is_caught():
    y = torch.empty(1)
    with sanitize(), pytest.raises(MemoryAccessError, match="different values"):
        _lanes_into_one[(1,)](y, BLOCK=4)


def test_reading_back_a_store_needs_a_barrier():
    x, scratch, y = torch.randn(8), torch.empty(8), torch.empty(8)
    with sanitize(), pytest.raises(MemoryAccessError, match=r"loads element 7 of argument 'scratch_ptr' .*, which it stored itself with no tl.debug_barrier"):
        _reverse_through_scratch[(1,)](x, scratch, y, BLOCK=8, FENCED=False)
    with sanitize():
        _reverse_through_scratch[(1,)](x, scratch, y, BLOCK=8, FENCED=True)
    assert torch.equal(y, x.flip(0))


def test_masked_off_lanes_without_other_are_poison():
    """The interpreter reads 0 there, so a missing `other=0.0` passes on the CPU; a GPU reads garbage."""
    x, y = torch.randn(5), torch.empty(1)
    with sanitize():
        _masked_sum[(1,)](x, y, 5, OTHER=False, BLOCK=8)
        assert y.isnan().all()
        _masked_sum[(1,)](x, y, 5, OTHER=True, BLOCK=8)
        assert torch.allclose(y, x.sum())


def test_every_test_runs_sanitized():
    """tests/conftest.py turns the sanitizer on for every test, so the op tests check bounds and races
    of the real kernels without asking for it."""
    x, y = torch.randn(13), torch.empty(13)
    with pytest.raises(MemoryAccessError):
        _copy[(2,)](x, y, 13, 13, 13, MASKED=False, BLOCK=8)


def test_an_access_inside_a_jit_helper_raises_memory_access_error():
    """The interpreter wraps an exception once more per @triton.jit call level it passes; a violation
    in a helper must still come out as MemoryAccessError naming the kernel, not as an InterpreterError
    holding its repr."""
    y = torch.empty(13)
    with sanitize(), pytest.raises(MemoryAccessError, match=r"_fill_through_helper, program \(1, 0, 0\).*store.*element 13 of argument 'y_ptr'"):
        _fill_through_helper[(2,)](y, BLOCK=8)
