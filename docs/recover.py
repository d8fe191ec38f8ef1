#!/usr/bin/env python3
"""Rebuild a sqlvault snapshot with only `age`, `zstd` and this script.

Usage: recover.py REPO_DIR IDENTITY_FILE OUT [SNAPSHOT_ID_PREFIX] [--name NAME] [--at TIME]

OUT is the database file for a page snapshot, and the SQL dump for a dump snapshot
(then: `sqlite3 new.db < OUT`).

REPO_DIR is a local copy of the repository (for a bucket: `aws s3 sync s3://b/p REPO_DIR`
or any equivalent). The newest snapshot is rebuilt unless an id prefix is given;
--name NAME keeps to one database of a repository holding several.
With --at TIME (RFC 3339 UTC, e.g. 2026-11-28T14:03:07Z), the newest state of a
replicated database observed at or before TIME: a snapshot, or a replication base
followed by its segments (docs/format.md, "Segments").
This script follows docs/format.md (format version 1). It does not check the
repository MACs (that needs the repository secret); check the result with
`sqlite3 OUT.db 'PRAGMA integrity_check'`. Python 3 standard library only.
"""
import datetime
import json
import os
import struct
import subprocess
import sys


def age_decrypt(path, identity):
    return subprocess.run(["age", "-d", "-i", identity, path], check=True, capture_output=True).stdout


def zstd_decompress(frame):
    return subprocess.run(["zstd", "-d", "-c", "-q"], input=frame, check=True, capture_output=True).stdout


def segments_until(repo, identity, base, at_ms):
    """The segments of `base`'s chain observed at or before at_ms, in order from 1
    (a missing number ends the search with an error: later states need it)."""
    d = os.path.join(repo, "segments", base["id"])
    if not os.path.isdir(d):
        return []
    seqs = sorted(int(n) for n in os.listdir(d) if n.isdigit() and len(n) == 20)
    out = []
    for i, seq in enumerate(seqs):
        body = json.loads(age_decrypt(os.path.join(d, "%020d" % seq), identity).split(b"\n")[0])
        if body["observed_ms"] > at_ms:
            break
        if seq != i + 1:
            sys.exit("segment %d of chain %s is missing" % (i + 1, base["id"]))
        out.append(body)
    return out


def main():
    args = sys.argv[1:]
    at_ms = None
    if "--at" in args:
        i = args.index("--at")
        t = args[i + 1].replace("Z", "+00:00")
        at_ms = int(datetime.datetime.fromisoformat(t).timestamp() * 1000)
        del args[i:i + 2]
    only = None
    if "--name" in args:
        i = args.index("--name")
        only = args[i + 1]
        del args[i:i + 2]
    repo, identity, out = args[0], args[1], args[2]
    want = args[3] if len(args) > 3 else ""

    # 1. Snapshot manifests: line 1 is the JSON body, line 2 its MAC.
    manifests = []
    for name in sorted(os.listdir(os.path.join(repo, "snapshots"))):
        if name.startswith(want):
            body = age_decrypt(os.path.join(repo, "snapshots", name), identity).split(b"\n")[0]
            manifests.append(json.loads(body))
    if only is not None:
        manifests = [x for x in manifests if x["name"] == only]
    if at_ms is not None:
        manifests = [x for x in manifests if x["created_ms"] <= at_ms]
    if not manifests:
        sys.exit("no matching snapshot")
    m = max(manifests, key=lambda x: x["created_ms"])
    if at_ms is not None:
        # A replication base at or before the time, with the segments observed by then,
        # wins over a plain snapshot taken before its newest segment.
        bases = [x for x in manifests if x.get("replicated") and x["name"] == m["name"]]
        if bases:
            b = max(bases, key=lambda x: x["created_ms"])
            segs = segments_until(repo, identity, b, at_ms)
            if segs and segs[-1]["observed_ms"] >= m["created_ms"]:
                m = dict(b)
                m["maps"] = b["maps"] + [r for s in segs for r in s["maps"]]
                m["page_count"] = segs[-1]["page_count"]
                m["id"] = "%s+%d" % (b["id"], len(segs))
    page_size, page_count = m["page_size"], m["page_count"]
    dump = m.get("kind", "pages") == "dump"

    if dump:
        # 2'. Chunk sequences, applied in order: "SQLVSEQ1", kind u8, count u32,
        #     total u64, ops u32; full (kind 0): count x (id[32], len u32); edit (kind 1):
        #     ops x (0, start u32, n u32: copy from the base | 1, n u32, n x (id[32], len u32)).
        order = []
        for ref in m["maps"]:
            b = age_decrypt(os.path.join(repo, "maps", ref["id"]), identity)
            assert b[:8] == b"SQLVSEQ1", "not a chunk sequence"
            kind = b[8]
            count, total, nops = struct.unpack_from("<IQI", b, 9)
            pos, new = 25, []
            if kind == 0:
                new = [b[pos + 36 * i: pos + 36 * i + 32] for i in range(count)]
            else:
                for _ in range(nops):
                    op, pos = b[pos], pos + 1
                    if op == 0:
                        start, n = struct.unpack_from("<II", b, pos)
                        new.extend(order[start:start + n])
                        pos += 8
                    else:
                        (n,) = struct.unpack_from("<I", b, pos)
                        new.extend(b[pos + 4 + 36 * i: pos + 36 + 36 * i] for i in range(n))
                        pos += 4 + 36 * n
            assert len(new) == count, "chunk sequence does not add up"
            order = new
    else:
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
        order = [pages[p] for p in range(1, page_count + 1)]

    # 3. Indexes: "SQLVIDX2" (or "SQLVIDX1"), packs u32, per pack: id[16], frames u32,
    #    per frame: frame_off u64, frame_len u32, chunk_len u32, n u32, then n x id[32]
    #    when chunk_len > 0 (chunk i at i*chunk_len) else n x (id[32], off u32, len u32);
    #    a SQLVIDX2 index ends with a 32-byte MAC (it needs the secret: not checked).
    #    An index that does not decrypt is skipped: a bucket writer may have left it.
    where = {}
    for name in os.listdir(os.path.join(repo, "index")):
        try:
            b = age_decrypt(os.path.join(repo, "index", name), identity)
        except subprocess.CalledProcessError:
            continue
        if b[:8] == b"SQLVIDX2":
            b = b[:-32]
        elif b[:8] != b"SQLVIDX1":
            continue
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
    for cid in set(order):
        pack, fo, fl, off, ln = where[cid]
        needed.setdefault(pack, {}).setdefault((fo, fl), []).append((cid, off, ln))
    chunks = {}
    for pack, frames in needed.items():
        plain = age_decrypt(os.path.join(repo, "packs", pack), identity)
        for (fo, fl), items in frames.items():
            data = zstd_decompress(plain[fo:fo + fl])
            for cid, off, ln in items:
                chunks[cid] = data[off:off + ln]

    # 5. Write the pages (or the SQL) in order.
    with open(out, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        for cid in order:
            data = chunks[cid]
            assert dump or len(data) == page_size
            f.write(data)
    if dump:
        print("rebuilt dump snapshot %s of %s: %d bytes of SQL (load: sqlite3 new.db < %s)"
              % (m["id"], m["name"], m["stats"]["bytes_read"], out))
    else:
        print("rebuilt snapshot %s of %s: %d pages" % (m["id"], m["name"], page_count))


if __name__ == "__main__":
    main()
