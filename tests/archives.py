"""Archives built in memory for the tests (imported by test_data.py and test_weights.py)."""
from __future__ import annotations

import io
import tarfile


def tar_bytes(members: dict[str, bytes], links: dict[str, tuple[str, bytes]] | None = None,
              compression: str = "") -> bytes:
    """A tar archive of `members` (name -> content) then `links` (name -> (target, type:
    tarfile.SYMTYPE or tarfile.LNKTYPE)), compressed with `compression` ("" or "gz")."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for name, (target, kind) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def tar_gz(members: dict[str, bytes], links: dict[str, tuple[str, bytes]] | None = None
           ) -> bytes:
    """`tar_bytes(members, links)`, gzip-compressed."""
    return tar_bytes(members, links, compression="gz")
