"""A box of voxels: the read and write regions every block-wise stage works with (daisy's ``Roi``, in voxels).

A :class:`Region` is a tuple of slices with concrete bounds, one per axis in the volume's order (``(X, Y, Z)``), so
numpy, zarr and Dask index with it as they index with any tuple of slices; what it adds is the arithmetic stages
otherwise write by hand: ``begin``, ``end``, ``shape``, ``size``, :meth:`Region.local` (where a region lies in an
array read at another), :meth:`Region.grow` and :meth:`Region.intersect`.

>>> write = Region.from_bounds((64, 0, 0), (128, 64, 32))
>>> read = write.grow(1, 0, (256, 256, 64))
>>> read.begin, read.shape, write.local(read)
((63, 0, 0), (65, 64, 32), Region[1:65, 0:64, 0:32])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def triple(values: Iterable) -> tuple[int, int, int]:
    """Three values per axis (X, Y, Z) as ints; anything but three is a ``ValueError``."""
    x, y, z = values
    return int(x), int(y), int(z)


class Region(tuple):
    """A box of voxels, begin inclusive and end exclusive per axis, usable wherever a tuple of slices is."""

    __slots__ = ()

    def __new__(cls, slices: Iterable[slice]) -> Region:
        bounds = []
        for s in slices:
            if s.start is None or s.stop is None or s.step not in (None, 1):
                raise ValueError(f"a region needs concrete bounds and unit steps, got {s}")
            bounds.append(slice(int(s.start), int(s.stop)))
        return super().__new__(cls, bounds)

    @classmethod
    def from_bounds(cls, begin: Sequence[int], end: Sequence[int]) -> Region:
        """The region ``[begin, end)`` per axis."""
        return cls(slice(b, e) for b, e in zip(begin, end))

    @classmethod
    def of_shape(cls, shape: Sequence[int]) -> Region:
        """The whole of an array of ``shape``: ``[0, shape)`` per axis."""
        return cls(slice(0, s) for s in shape)

    @property
    def begin(self) -> tuple[int, ...]:
        return tuple(s.start for s in self)

    @property
    def end(self) -> tuple[int, ...]:
        return tuple(s.stop for s in self)

    @property
    def shape(self) -> tuple[int, ...]:
        """Voxels per axis (0 where the region is empty along it)."""
        return tuple(max(0, s.stop - s.start) for s in self)

    @property
    def size(self) -> int:
        """Voxels in the region."""
        total = 1
        for n in self.shape:
            total *= n
        return total

    @property
    def empty(self) -> bool:
        return any(s.stop <= s.start for s in self)

    def local(self, outer: Sequence[slice]) -> Region:
        """This region in the coordinates of an array holding ``outer`` (this region's begin and end minus
        ``outer``'s begin): where a write region lies inside the block read at its read region."""
        return Region(slice(s.start - o.start, s.stop - o.start) for s, o in zip(self, outer))

    def grow(
        self, lower: int | Sequence[int] = 0, upper: int | Sequence[int] = 0, bounds: Sequence[int] | None = None
    ) -> Region:
        """This region grown by ``lower`` voxels below and ``upper`` above (an int or one per axis), clipped to
        ``[0, bounds)`` per axis when ``bounds`` (a shape) is given."""
        n = len(self)
        lower = (lower,) * n if isinstance(lower, int) else tuple(lower)
        upper = (upper,) * n if isinstance(upper, int) else tuple(upper)
        begin = [s.start - int(lo) for s, lo in zip(self, lower)]
        end = [s.stop + int(up) for s, up in zip(self, upper)]
        if bounds is not None:
            begin = [max(0, b) for b in begin]
            end = [min(int(limit), e) for limit, e in zip(bounds, end)]
        return Region.from_bounds(begin, end)

    def intersect(self, other: Sequence[slice]) -> Region | None:
        """The voxels in both regions, or None when they share none."""
        box = Region(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(self, other))
        return None if box.empty else box

    def contains(self, other: Sequence[slice]) -> bool:
        return all(a.start <= b.start and b.stop <= a.stop for a, b in zip(self, other))

    def __repr__(self) -> str:
        return "Region[" + ", ".join(f"{s.start}:{s.stop}" for s in self) + "]"

    def __reduce__(self):
        return Region, (tuple(self),)
