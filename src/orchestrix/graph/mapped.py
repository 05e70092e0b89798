"""Which file a numpy memory map shows, checked against this process's mappings.

A memory map remembers the name it was opened by, not the file. The name may since have been
deleted (a dump file is removed as soon as the caller holds its map, and the dump directory when
the orchestrator closes) or may lead to another file (one renamed over it); the map still shows the
old bytes. Naming such a map by its file would give a key that no longer fits its content, or
read another file in a tile task. So before naming a map by its file, :func:`mapped_file` asks the
kernel (``/proc/self/maps``, Linux) which file is mapped under the array's data and checks that
the name still leads to that file. Where it cannot tell, it says so (None) and callers use the
array's bytes instead: slower, never wrong.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = ["MappedFile", "mapped_file"]

_MAPS = "/proc/self/maps"


@dataclass(frozen=True, slots=True)
class MappedFile:
    """A read-only view of a file that its name still leads to."""

    path: str
    offset: int  # where in the file the array's data pointer lies
    stamp: str  # inode, modification time and size: a change of content changes it


def mapped_file(array: Any) -> MappedFile | None:
    """The file under ``array``'s data, if it is mapped shared and read-only, its name still leads
    to it, and no writable mapping of it exists in this process (writes through a mapping need
    not change the modification time); else None."""
    address = array.__array_interface__["data"][0]
    rows = _file_mappings()
    found = next((row for row in rows if row[0] <= address < row[1]), None)
    if found is None:
        return None
    start, _end, perms, offset, inode, path = found
    if perms[1] == "w" or perms[3] != "s":
        return None  # writable or copy-on-write: the bytes may differ from the file's
    if any(row[4] == inode and row[2][1] == "w" for row in rows):
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None  # deleted (the kernel appends " (deleted)" to the name) or unreachable
    # The inode alone: overlay file systems report another device in the maps than stat does,
    # and no other file can have this inode while this one is mapped (it is still allocated).
    if stat.st_ino != inode:
        return None  # the name now leads to another file
    stamp = f"{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_size}"
    return MappedFile(path, offset + address - start, stamp)


def _file_mappings() -> list[tuple[int, int, str, int, int, str]]:
    """(start, end, permissions, file offset, inode, path) of each file mapping of this process."""
    try:
        with open(_MAPS, encoding="utf-8", errors="surrogateescape") as stream:
            text = stream.read()
    except OSError:
        return []  # not Linux, or /proc not mounted: nothing is known
    rows = []
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[4] == "0":
            continue  # anonymous memory
        start, _, end = fields[0].partition("-")
        offset, inode = int(fields[2], 16), int(fields[4])
        rows.append((int(start, 16), int(end, 16), fields[1], offset, inode, fields[5]))
    return rows
