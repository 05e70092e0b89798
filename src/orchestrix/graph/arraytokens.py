"""How numpy arrays are written into a token (see :mod:`orchestrix.graph.tokenize`).

An array is written as its dtype, shape and bytes. A memory map still backed by its file is named
by the file instead (:func:`~orchestrix.graph.mapped.mapped_file`). An array of
:data:`LARGE_ARGUMENT_BYTES` or more is written as the digest of its bytes, so that the digest can
be kept: hashing 1 GiB takes seconds, and a large array is often passed to many calls. It is kept
only for an array whose bytes cannot change (read-only down to the owner of its memory, an array
or a ``bytes`` object), until the array is collected. A writeable array is hashed again at every
call: numpy keeps no count of writes, and a key kept for an array mutated since would name a stale
result on resume. Read-only is taken at its word: an owner made writeable again, written, and made
read-only again between two calls would keep its older key.
"""

from __future__ import annotations

import functools
import hashlib
import weakref
from collections.abc import Callable
from typing import Any

from .mapped import mapped_file

__all__ = ["LARGE_ARGUMENT_BYTES", "dtype_text", "feed_array"]

#: an argument of this many bytes or more is large: hashed apart (its digest kept while it cannot
#: change), and its task warned of (``LargeArgumentWarning``)
LARGE_ARGUMENT_BYTES = 100_000_000

# id of a large array whose bytes cannot change -> (weak reference, digest of its bytes)
_ARRAY_DIGESTS: dict[int, tuple[Any, bytes]] = {}


def feed_array(walker: Any, array: Any, numpy: Any) -> None:
    dtype = array.dtype
    walker.tag(b"ndarray", f"{dtype_text(dtype)}{array.shape}")
    mapped = mapped_file(array) if type(array) is numpy.memmap else None
    if mapped is not None:
        # A memory map still backed by its file is named by it: hashing gigabytes would be slow.
        walker.tag(b"memmap", f"{mapped.path}:{mapped.offset}:{mapped.stamp}:{array.strides}")
    elif dtype.hasobject:
        walker.push(array.tolist())
    elif array.nbytes >= LARGE_ARGUMENT_BYTES:
        walker.largest = max(walker.largest, array.nbytes)
        walker._update(b"digest:" + _large_array_digest(array, numpy))
    else:
        _feed_array_bytes(walker._update, array, numpy)


def _feed_array_bytes(update: Callable[[Any], None], array: Any, numpy: Any) -> None:
    data = numpy.ascontiguousarray(array)
    try:
        update(memoryview(data).cast("B"))
    except (TypeError, ValueError):  # dtypes with no buffer format: datetimes
        update(data.reshape(-1).view(numpy.uint8))


def _large_array_digest(array: Any, numpy: Any) -> bytes:
    """The digest of a large array's bytes: the one kept while they cannot change, or made."""
    fixed = _unchangeable(array, numpy)
    ident = id(array)
    cached = _ARRAY_DIGESTS.get(ident) if fixed else None
    if cached is not None and cached[0]() is array:
        return cached[1]
    hasher = hashlib.md5(usedforsecurity=False)
    _feed_array_bytes(hasher.update, array, numpy)
    digest = hasher.digest()
    if fixed:
        _ARRAY_DIGESTS[ident] = (
            weakref.ref(array, functools.partial(_forget_array, ident)),
            digest,
        )
    return digest


def _unchangeable(array: Any, numpy: Any) -> bool:
    """Whether nothing can write ``array``'s bytes: it and every array it views are read-only,
    and their memory is owned by the last of them or by a ``bytes`` object. (A memory map is
    not: another process may write its file.)"""
    while isinstance(array, numpy.ndarray):
        if array.flags.writeable or type(array) is numpy.memmap:
            return False
        array = array.base
    return array is None or type(array) is bytes


def _forget_array(ident: int, _ref: Any) -> None:
    _ARRAY_DIGESTS.pop(ident, None)


def dtype_text(dtype: Any) -> str:
    return dtype.str if dtype.names is None else repr(dtype.descr)
