"""Reading one webdataset shard so that nothing in it is lost without a word.

webdataset's own member iterator opens Python's ``tarfile``, which reads a corrupt header in mid-archive as the
end of the archive (every sample after it is dropped silently) and takes a file cut at a member boundary for a
complete one. This reader skips a damaged stretch to the next valid header, as GNU tar does, and reports every
damaged stretch, truncation and unreadable member, naming the file; ``clipag.finetune`` counts them in
``skipped_samples`` and ``clipag.eval`` in ``skipped``.
"""

from __future__ import annotations

import logging
import re
import tarfile
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["ShardDamage", "tar_records"]

log = logging.getLogger("clipag.data")
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members, which it skips too


class ShardDamage(Exception):
    """Part of a webdataset shard could not be read: a corrupt header, or the file ends early."""


class _WatchedHeader(tarfile.TarInfo):
    """Tells the shard reader about every header block tarfile rejects (one subclass per shard holds its
    :class:`_Damage`, since tarfile reads the first header inside ``tarfile.open``).

    Python's tarfile reads a corrupt header in mid-archive as the end of the archive, and a file cut at a
    member boundary looks complete; with ``ignore_zeros`` it skips bad blocks to the next valid header (GNU
    tar's recovery) but says nothing. This hook is how the skipped bytes get counted and reported.
    """

    damage: _Damage

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if cls.damage.nested:  # the header a pax/GNU extended header points to: judged with it, as one
            return super().fromtarfile(tar)
        cls.damage.nested = True
        try:
            info = super().fromtarfile(tar)
        except tarfile.HeaderError as e:
            cls.damage.rejected(tar.offset, e)
            raise
        finally:
            cls.damage.nested = False
        cls.damage.accepted(info.offset)
        return info


class _Damage:
    """The damaged regions of one shard, as tarfile meets them: a run of rejected header blocks up to the next
    valid header (or the end of the file), a header cut short, or a file with no end-of-archive marker."""

    def __init__(self, url: str) -> None:
        self.url, self.found = url, []
        self.bad_from: int | None = None  # the first rejected non-zero block of the current damaged region
        self.ended = False  # the last block read was a zero block: the end-of-archive marker (or its padding)
        self.nested = False  # inside the read of one header, which may read the extended headers it follows

    def rejected(self, offset: int, error: tarfile.HeaderError) -> None:
        if isinstance(error, tarfile.InvalidHeaderError | tarfile.SubsequentHeaderError):
            self.unreadable(offset)
        elif isinstance(error, tarfile.EOFHeaderError):  # a zero block
            self.ended = self.bad_from is None
        else:  # a header cut short, or no header at all: the end of the file
            if self.bad_from is not None:
                self._close(offset, "to the end of the file: the samples there are lost")
            elif isinstance(error, tarfile.TruncatedHeaderError):
                self._report(f"the file ends inside a tar header at byte {offset}: it is truncated")
            elif not self.ended and offset > 0:
                self._report(f"no end-of-archive marker after byte {offset}: the file is probably truncated, and "
                             "the samples after it lost")

    def unreadable(self, offset: int) -> None:
        """tarfile could not read the header at ``offset`` (or one it points to) and the reader skips past it."""
        self.bad_from = offset if self.bad_from is None else self.bad_from
        self.ended = False

    def accepted(self, offset: int) -> None:
        self._close(offset, f"up to the next valid header, at byte {offset}")
        self.ended = False

    def _close(self, offset: int, how: str) -> None:
        if self.bad_from is not None:
            self._report(f"bad tar header at byte {self.bad_from}; skipped {offset - self.bad_from} bytes {how}")
        self.bad_from = None

    def _report(self, what: str) -> None:
        self.found.append(ShardDamage(f"{self.url}: {what}"))


def _tar_members(url: str, handler: Callable[[Exception], bool]) -> Iterator[dict[str, Any]]:
    """``{"fname", "data", "__url__"}`` for each regular file of one shard, reading past damaged regions.

    Hand-written in place of webdataset's member iterator, which opens tarfile without ``ignore_zeros`` and so
    stops silently at the first corrupt header; damage goes to ``handler`` as :class:`ShardDamage`.
    """
    from webdataset.gopen import gopen

    damage = _Damage(url)
    try:
        stream = gopen(url)
    except Exception as e:
        handler(ShardDamage(f"{url}: cannot open it ({type(e).__name__}: {e})"))
        return
    try:
        watched = type("_WatchedShardHeader", (_WatchedHeader,), {"damage": damage})
        with tarfile.open(fileobj=stream, mode="r|*", ignore_zeros=True, tarinfo=watched) as tar:
            done = tar.firstmember is None  # open() reads the first header: if there is none, the shard is over
            while True:
                info = None
                if not done:
                    try:
                        info = tar.next()
                    except tarfile.ReadError:  # a bad header after an extended (pax/GNU) one: tarfile stops
                        if tar.fileobj.tell() <= tar.offset:  # at the end of the file: nothing left to skip to
                            raise
                        damage.unreadable(tar.offset)
                        tar.offset = tar.fileobj.tell()  # go on from the next block, as for any bad header
                        continue
                for problem in damage.found:
                    handler(problem)
                damage.found.clear()
                if info is None:
                    return
                if not info.isreg() or _META.match(info.name):
                    continue
                try:
                    data = tar.extractfile(info).read()  # type: ignore[union-attr]
                except Exception as e:
                    handler(ShardDamage(f"{url}: cannot read {info.name} at byte {info.offset} ({type(e).__name__}: "
                                        f"{e}): the file is truncated or damaged; the rest of it is skipped"))
                    return
                tar.members = []  # a streamed shard keeps no member list
                yield {"fname": info.name, "data": data, "__url__": url}
    except Exception as e:  # tarfile cannot go on: the rest of the shard is unreadable
        handler(ShardDamage(f"{url}: {type(e).__name__}: {e}; the rest of the shard is skipped"))
    finally:
        stream.close()


def tar_records(url: str, on_error: Callable[[Exception], None] = lambda exn: None) -> Iterator[dict[str, Any]]:
    """The records of one webdataset shard. Broken members and damaged regions (a corrupt header, a truncated
    file) are logged with the file named, passed to ``on_error`` once each, and skipped; reading resumes at the
    next valid header."""
    from webdataset.tariterators import group_by_keys

    def handler(exn: Exception) -> bool:
        if isinstance(exn, ShardDamage):
            log.warning("damaged webdataset shard: %s", exn)
        else:
            log.warning("skipping unreadable webdataset record (%s: %s)", type(exn).__name__, exn)
        on_error(exn)
        return True  # continue with the next record

    return group_by_keys(_tar_members(url, handler), handler=handler)
