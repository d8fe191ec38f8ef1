#!/usr/bin/env python3
"""Rebuild a sqlvault snapshot with only `age`, `zstd` and this script.

Usage: recover.py REPO_DIR IDENTITY_FILE OUT.db [SNAPSHOT_ID_PREFIX]

REPO_DIR is a local copy of the repository (for a bucket: `aws s3 sync s3://b/p REPO_DIR`
or any equivalent). The newest snapshot is rebuilt unless an id prefix is given.
This script follows docs/format.md (format version 1). It does not check the
repository MACs (that needs the repository secret); check the result with
`sqlite3 OUT.db 'PRAGMA integrity_check'`. Python 3 standard library only.
"""
import json
import os
import struct
import subprocess
import sys


def age_decrypt(path, identity):
    return subprocess.run(["age", "-d", "-i", identity, path], check=True, capture_output=True).stdout


def zstd_decompress(frame):
    return subprocess.run(["zstd", "-d", "-c", "-q"], input=frame, check=True, capture_output=True).stdout


def main():
    repo, identity, out = sys.argv[1], sys.argv[2], sys.argv[3]
    want = sys.argv[4] if len(sys.argv) > 4 else ""

    # 1. Snapshot manifests: line 1 is the JSON body, line 2 its MAC.
    manifests = []
    for name in sorted(os.listdir(os.path.join(repo, "snapshots"))):
        if name.startswith(want):
            body = age_decrypt(os.path.join(repo, "snapshots", name), identity).split(b"\n")[0]
            manifests.append(json.loads(body))
    if not manifests:
        sys.exit("no matching snapshot")
    m = max(manifests, key=lambda x: x["created_ms"])
    page_size, page_count = m["page_size"], m["page_count"]

    # 2. Page maps, applied in order: "SQLVMAP1", kind u8, page_count u32, n u32, then
    #    a full map (kind 0): n x id[32] in page order; a delta (kind 1): n x (pgno u32, id[32]).
    pages = {}
    for ref in m["maps"]:
        b = age_decrypt(os.path.join(repo, "maps", ref["id"]), identity)
        assert b[:8] == b"SQLVMAP1", "not a page map"
        kind, count, n = b[8], *struct.unpack_from("<II", b, 9)
        if kind == 0:
            pages = {i + 1: b[17 + 32 * i: 49 + 32 * i] for i in range(n)}
        else:
            for i in range(n):
                pgno = struct.unpack_from("<I", b, 17 + 36 * i)[0]
                pages[pgno] = b[21 + 36 * i: 53 + 36 * i]
        pages = {p: c for p, c in pages.items() if p <= count}
    assert len(pages) == page_count, "page maps do not cover the database"

    # 3. Indexes: "SQLVIDX1", packs u32, per pack: id[16], frames u32, per frame:
    #    frame_off u64, frame_len u32, chunk_len u32, n u32, then n x id[32] when
    #    chunk_len > 0 (chunk i at i*chunk_len) else n x (id[32], off u32, len u32).
    where = {}
    for name in os.listdir(os.path.join(repo, "index")):
        b = age_decrypt(os.path.join(repo, "index", name), identity)
        assert b[:8] == b"SQLVIDX1", "not an index"
        (npacks,), pos = struct.unpack_from("<I", b, 8), 12
        for _ in range(npacks):
            pack = b[pos:pos + 16].hex()
            (nframes,) = struct.unpack_from("<I", b, pos + 16)
            pos += 20
            for _ in range(nframes):
                fo, fl, clen, n = struct.unpack_from("<QIII", b, pos)
                pos += 20
                for i in range(n):
                    cid = b[pos:pos + 32]
                    if clen > 0:
                        off, ln = i * clen, clen
                        pos += 32
                    else:
                        off, ln = struct.unpack_from("<II", b, pos + 32)
                        pos += 40
                    where.setdefault(cid, (pack, fo, fl, off, ln))

    # 4. Packs: one age stream of zstd frames (plus a trailer we do not need here).
    needed = {}
    for cid in set(pages.values()):
        pack, fo, fl, off, ln = where[cid]
        needed.setdefault(pack, {}).setdefault((fo, fl), []).append((cid, off, ln))
    chunks = {}
    for pack, frames in needed.items():
        plain = age_decrypt(os.path.join(repo, "packs", pack), identity)
        for (fo, fl), items in frames.items():
            data = zstd_decompress(plain[fo:fo + fl])
            for cid, off, ln in items:
                chunks[cid] = data[off:off + ln]

    # 5. Write the pages in order.
    with open(out, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        for pgno in range(1, page_count + 1):
            page = chunks[pages[pgno]]
            assert len(page) == page_size
            f.write(page)
    print("rebuilt snapshot %s of %s: %d pages" % (m["id"], m["name"], page_count))


if __name__ == "__main__":
    main()
