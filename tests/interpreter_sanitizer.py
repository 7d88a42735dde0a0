"""Memory checks the Triton interpreter leaves out: out-of-bounds accesses and races between programs.

Under ``TRITON_INTERPRET=1`` a load or store at any address in the process simply happens, and the
program instances of a launch run one after another, so two bugs that a GPU shows only as garbage,
a fault or a result that changes from run to run pass unseen on the CPU. ``sanitize()`` wraps the
interpreter so that every launch checks:

* **bounds**: every active lane of a load, store or atomic addresses an element of one of the
  tensors passed to the kernel (for a strided view, an element of the view: not a gap between its
  rows, not the storage past its end), aligned to the element size, and all lanes of one access the
  same tensor;
* **write-write races**: no address is stored by two different programs (on a GPU the order is
  undefined), and no store writes one address from two lanes with different values;
* **read-write races**: no program loads an address that another program of the same launch stores
  (on a GPU it may see the old or the new value);
* **unfenced read-back**: no program loads an address it stored itself unless a ``tl.debug_barrier()``
  lies between (another thread of the program may have stored it; which thread holds which element
  is the compiler's choice, so the check cannot exempt a thread reading its own store).

It also poisons what a GPU leaves undefined: the masked-off lanes of a load without ``other`` are NaN
(integers: a large value, booleans: True) instead of the interpreter's 0, so a kernel whose result
depends on them fails its value tests here as it would on a GPU.

Atomics are bounds-checked and left out of the race checks. A violation raises ``MemoryAccessError``
naming the kernel, the program, the argument and the element. Used by ``tests/conftest.py`` for every
test when the interpreter is on; it relies on the interpreter's internals (``GridExecutor``,
``InterpreterBuilder``) and says so if they change, rather than checking nothing.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

import numpy as np

__all__ = ["MemoryAccessError", "sanitize"]


class MemoryAccessError(AssertionError):
    """A kernel touched memory it was not given, or two programs raced on an address."""


@dataclasses.dataclass
class _Argument:
    """One tensor passed to the kernel: where its elements are."""

    name: str
    base: int                 # address of element 0 (data_ptr)
    itemsize: int
    sizes: tuple[int, ...]
    strides: tuple[int, ...]  # in elements
    # derived once per launch (every access asks): [first, last + 1) byte addresses any element can
    # have (empty for an empty tensor), and the (stride, size) dimensions largest stride first, or
    # None where they overlap (then only the span can be checked)
    span: tuple[int, int] = dataclasses.field(init=False)
    dims: list[tuple[int, int]] | None = dataclasses.field(init=False)

    def __post_init__(self):
        if any(n == 0 for n in self.sizes):
            self.span = (self.base, self.base)
        else:
            low = sum(min(0, (n - 1) * st) for n, st in zip(self.sizes, self.strides))
            high = sum(max(0, (n - 1) * st) for n, st in zip(self.sizes, self.strides))
            self.span = (self.base + low * self.itemsize, self.base + (high + 1) * self.itemsize)
        dims = sorted(((st, n) for n, st in zip(self.sizes, self.strides) if n > 1 and st != 0), reverse=True)
        self.dims = dims if all(st > 0 for st, _ in dims) and _nested(dims) else None

    def holds(self, addresses: np.ndarray, width: int) -> np.ndarray:
        """For each byte address, whether a ``width``-byte access there lies on one element of the view."""
        lo, hi = self.span
        inside = (addresses >= lo) & (addresses + width <= hi)
        if width != self.itemsize or not inside.any():
            return inside  # a reinterpreting access: the span is all that can be said
        offset = (addresses - self.base).astype(np.int64)
        inside &= offset % self.itemsize == 0
        element = offset // self.itemsize
        if self.dims is None:
            return inside  # overlapping or negative strides: fall back to the span
        for stride, size in self.dims:  # the unique decomposition of a non-overlapping layout
            index = element // stride
            inside &= index < size
            element = element - index * stride
        return inside & (element == 0)

    def describe(self, address: int) -> str:
        lo, hi = self.span
        offset = address - self.base
        where = (f"element {offset // self.itemsize}" if offset % self.itemsize == 0
                 else f"byte {offset} (misaligned for {self.itemsize}-byte elements)")
        return (f"{where} of argument {self.name!r} (shape {list(self.sizes)}, strides "
                f"{list(self.strides)}, bytes [{lo - self.base}, {hi - self.base}) from element 0)")


def _nested(dims: list[tuple[int, int]]) -> bool:
    """Whether (stride, size) pairs sorted by stride, largest first, never overlap: each stride is
    larger than the furthest offset the smaller dimensions reach."""
    reach = 0
    for stride, size in reversed(dims):
        if stride <= reach:
            return False
        reach += (size - 1) * stride
    return True


@dataclasses.dataclass
class _Launch:
    kernel: str
    grid: tuple[int, int, int] = (1, 1, 1)
    arguments: list[_Argument] = dataclasses.field(default_factory=list)
    reads: list[tuple[np.ndarray, int]] = dataclasses.field(default_factory=list)
    writes: list[tuple[np.ndarray, int]] = dataclasses.field(default_factory=list)
    unfenced: list[np.ndarray] = dataclasses.field(default_factory=list)  # this program's stores since its last barrier
    unfenced_range: tuple[int, int] = (0, -1)                               # their [min, max] address

    def fence(self) -> None:
        self.unfenced, self.unfenced_range = [], (0, -1)

    def check_read_back(self, addresses: np.ndarray, program) -> None:
        lo, hi = self.unfenced_range
        if addresses.size == 0 or addresses.max() < lo or addresses.min() > hi:
            return
        stored = np.isin(addresses, np.concatenate(self.unfenced))
        if stored.any():
            raise MemoryAccessError(
                f"{self.kernel}, program {program} of grid {self.grid}: loads {_name(self, int(addresses[stored][0]))}, "
                f"which it stored itself with no tl.debug_barrier() between; on a GPU another thread of "
                f"the program may have stored it, and the load may see the old value")

    def add_unfenced(self, addresses: np.ndarray) -> None:
        lo, hi = self.unfenced_range
        first, last = int(addresses.min()), int(addresses.max())
        self.unfenced.append(addresses)
        self.unfenced_range = (first, last) if lo > hi else (min(lo, first), max(hi, last))


_current: list[_Launch] = []   # the launch being interpreted (launches do not nest)


def _arguments(names, args, kwargs, unwrap) -> list[_Argument]:
    found = []

    def visit(name, value):
        if isinstance(value, tuple):
            for i, v in enumerate(value):
                visit(f"{name}[{i}]", v)
        elif hasattr(value, "data_ptr") and hasattr(value, "stride"):
            t = unwrap(value)  # a reinterpreting TensorWrapper: its tensor's elements
            found.append(_Argument(name, t.data_ptr(), t.element_size(), tuple(t.shape), tuple(t.stride())))

    for name, value in zip(names, args):
        visit(name, value)
    for name, value in kwargs.items():
        visit(name, value)
    return found


def _program(builder) -> tuple[int, int, int]:
    return tuple(int(i) for i in builder.grid_idx)


def _active(ptrs, mask) -> np.ndarray:
    """Which lanes of an access are on (all of them without a mask), in the pointers' shape."""
    shape = np.shape(ptrs.data)
    return np.ones(shape, dtype=bool) if mask is None else np.broadcast_to(np.asarray(mask.data).astype(bool), shape)


def _check_bounds(builder, kind: str, ptrs, mask) -> np.ndarray:
    """The active addresses of one access, after checking each lies on an element of an argument."""
    launch = _current[-1] if _current else None
    addresses = np.asarray(ptrs.data, dtype=np.uint64).astype(np.int64)[_active(ptrs, mask)]
    if launch is None or addresses.size == 0:
        return addresses
    width = max(1, ptrs.get_element_ty().primitive_bitwidth // 8)
    legal = np.zeros(addresses.shape, dtype=bool)
    owners = []   # the arguments holding every lane: a pointer comes from one tensor
    for argument in launch.arguments:
        held = argument.holds(addresses, width)
        legal |= held
        if held.all():
            owners.append(argument)
    if legal.all() and not owners:
        spanned = [a.name for a in launch.arguments if a.holds(addresses, width).any()]
        raise MemoryAccessError(
            f"{launch.kernel}, program {_program(builder)} of grid {launch.grid}: one {kind} reaches into "
            f"several tensors ({', '.join(map(repr, spanned))}): a pointer computed from one of them ran "
            f"past it into another")
    if not legal.all():
        bad = int(addresses[~legal][0])
        nearest = min(launch.arguments, key=lambda a: min(abs(bad - a.span[0]), abs(bad - a.span[1])), default=None)
        where = nearest.describe(bad) if nearest is not None else "no tensor argument at all"
        raise MemoryAccessError(
            f"{launch.kernel}, program {_program(builder)} of grid {launch.grid}: {kind} of {width} bytes "
            f"outside the tensors it was given ({int((~legal).sum())} of {legal.size} active lanes); "
            f"the first is at {where}")
    return addresses


def _undefined_like(ptrs, it):
    """What a masked-off lane of a load without ``other`` reads: undefined on a GPU, poison here."""
    element = ptrs.get_element_ty()
    dtype = it._get_np_dtype(element)
    if np.issubdtype(dtype, np.floating):
        fill = np.nan
    elif dtype == np.bool_:
        fill = True
    else:
        fill = np.iinfo(dtype).max // 3
    return it.TensorHandle(np.full(np.shape(ptrs.data), fill, dtype=dtype), element)


def _check_races(launch: _Launch) -> None:
    """No address stored by two programs, none loaded by one program and stored by another."""
    if not launch.writes:
        return
    w_addr = np.concatenate([a for a, _ in launch.writes])
    w_prog = np.concatenate([np.full(a.shape, p, dtype=np.int64) for a, p in launch.writes])
    pairs = np.unique(np.stack([w_addr, w_prog]), axis=1)
    addr, count = np.unique(pairs[0], return_counts=True)
    if (count > 1).any():
        bad = int(addr[count > 1][0])
        programs = sorted(int(p) for p in pairs[1][pairs[0] == bad])
        raise MemoryAccessError(
            f"{launch.kernel}, grid {launch.grid}: write-write race, programs {programs} (linear ids) all "
            f"store {_name(launch, bad)}; on a GPU the one that lands is undefined")
    if not launch.reads:
        return
    owner = pairs[1]  # one writer per address now; pairs are sorted by address
    r_addr = np.concatenate([a for a, _ in launch.reads])
    r_prog = np.concatenate([np.full(a.shape, p, dtype=np.int64) for a, p in launch.reads])
    at = np.searchsorted(pairs[0], r_addr)
    hit = at < pairs.shape[1]
    hit[hit] &= pairs[0][at[hit]] == r_addr[hit]
    foreign = hit.copy()
    foreign[hit] &= owner[at[hit]] != r_prog[hit]
    if foreign.any():
        i = int(np.flatnonzero(foreign)[0])
        raise MemoryAccessError(
            f"{launch.kernel}, grid {launch.grid}: read-write race, program {int(r_prog[i])} loads "
            f"{_name(launch, int(r_addr[i]))}, which program {int(owner[at[i]])} stores in the same launch; "
            f"on a GPU it may read the old or the new value")


def _name(launch: _Launch, address: int) -> str:
    for argument in launch.arguments:
        lo, hi = argument.span
        if lo <= address < hi:
            return argument.describe(address)
    return f"address {address:#x}"


def _linear(launch: _Launch, program: tuple[int, int, int]) -> int:
    gx, gy, _ = launch.grid
    return program[0] + gx * (program[1] + gy * program[2])


@contextlib.contextmanager
def sanitize() -> Iterator[None]:
    """Check every interpreted launch inside the block (see the module docstring)."""
    try:
        from triton.runtime import interpreter as it
        executor, builder_cls, unwrap = it.GridExecutor, it.InterpreterBuilder, it._unwrap_tensor
        originals = {
            (executor, "__call__"): executor.__call__,
            (executor, "_init_args_hst"): executor._init_args_hst,
            (builder_cls, "set_grid_dim"): builder_cls.set_grid_dim,
            (builder_cls, "set_grid_idx"): builder_cls.set_grid_idx,
            (builder_cls, "create_barrier"): builder_cls.create_barrier,
            (builder_cls, "create_masked_load"): builder_cls.create_masked_load,
            (builder_cls, "create_masked_store"): builder_cls.create_masked_store,
            (builder_cls, "create_atomic_rmw"): builder_cls.create_atomic_rmw,
            (builder_cls, "create_atomic_cas"): builder_cls.create_atomic_cas,
        }
    except AttributeError as e:  # pragma: no cover - a Triton whose interpreter was reorganised
        raise RuntimeError(f"tests/interpreter_sanitizer.py does not know this Triton's interpreter: {e}") from e

    def call(self, *args, **kwargs):
        _current.append(_Launch(getattr(self.fn, "__name__", str(self.fn))))
        try:
            originals[(executor, "__call__")](self, *args, **kwargs)
        except Exception as e:
            # the interpreter wraps an error as InterpreterError(repr(e)) from e, once per level of
            # @triton.jit function it passes (a load or store in a helper is two levels deep): find ours
            cause = e.__cause__
            while cause is not None and not isinstance(cause, MemoryAccessError):
                cause = cause.__cause__
            if cause is not None:
                raise cause.with_traceback(cause.__traceback__) from None
            raise
        else:
            _check_races(_current[-1])
        finally:
            _current.pop()

    def init_args_hst(self, args_dev, kwargs):
        args_hst, kwargs_hst = originals[(executor, "_init_args_hst")](self, args_dev, kwargs)
        if _current:
            _current[-1].arguments = _arguments(self.arg_names, args_hst, kwargs_hst, unwrap)
        return args_hst, kwargs_hst

    def set_grid_dim(self, nx, ny, nz):
        if _current:
            _current[-1].grid = (nx, ny, nz)
        return originals[(builder_cls, "set_grid_dim")](self, nx, ny, nz)

    def set_grid_idx(self, x, y, z):
        if _current:
            _current[-1].fence()   # a new program: nothing of its own stored yet
        return originals[(builder_cls, "set_grid_idx")](self, x, y, z)

    def barrier(self):
        if _current:
            _current[-1].fence()
        return originals[(builder_cls, "create_barrier")](self)

    def masked_load(self, ptrs, mask, other, *rest):
        addresses = _check_bounds(self, "load", ptrs, mask)
        if other is None:
            other = _undefined_like(ptrs, it)
        if _current:
            _current[-1].check_read_back(addresses, _program(self))
            _current[-1].reads.append((addresses, _linear(_current[-1], _program(self))))
        return originals[(builder_cls, "create_masked_load")](self, ptrs, mask, other, *rest)

    def masked_store(self, ptrs, value, mask, *rest):
        addresses = _check_bounds(self, "store", ptrs, mask)
        if _current and addresses.size:
            launch = _current[-1]
            order = np.argsort(addresses, kind="stable")
            sorted_addr = addresses[order]
            same = sorted_addr[1:] == sorted_addr[:-1]
            if same.any():
                values = np.broadcast_to(value.data, np.shape(ptrs.data))[_active(ptrs, mask)][order]
                if not np.array_equal(values[1:][same], values[:-1][same], equal_nan=values.dtype.kind == "f"):
                    raise MemoryAccessError(
                        f"{launch.kernel}, program {_program(self)} of grid {launch.grid}: one store writes "
                        f"different values to {_name(launch, int(sorted_addr[1:][same][0]))} from two lanes")
            launch.writes.append((sorted_addr[np.r_[True, ~same]], _linear(launch, _program(self))))   # distinct
            launch.add_unfenced(addresses)
        return originals[(builder_cls, "create_masked_store")](self, ptrs, value, mask, *rest)

    def atomic_rmw(self, op, ptr, val, mask, *rest):
        _check_bounds(self, "atomic", ptr, mask)
        return originals[(builder_cls, "create_atomic_rmw")](self, op, ptr, val, mask, *rest)

    def atomic_cas(self, ptr, cmp, val, *rest):
        _check_bounds(self, "atomic", ptr, None)
        return originals[(builder_cls, "create_atomic_cas")](self, ptr, cmp, val, *rest)

    replacements = {
        (executor, "__call__"): call, (executor, "_init_args_hst"): init_args_hst,
        (builder_cls, "set_grid_dim"): set_grid_dim, (builder_cls, "set_grid_idx"): set_grid_idx,
        (builder_cls, "create_barrier"): barrier, (builder_cls, "create_masked_load"): masked_load,
        (builder_cls, "create_masked_store"): masked_store, (builder_cls, "create_atomic_rmw"): atomic_rmw,
        (builder_cls, "create_atomic_cas"): atomic_cas,
    }
    for (owner, name), fn in replacements.items():
        setattr(owner, name, fn)
    try:
        yield
    finally:
        for (owner, name), fn in originals.items():
            setattr(owner, name, fn)
