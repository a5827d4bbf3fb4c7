#!/usr/bin/env python3
"""An independent PBS datastore writer and checker, written from the format
spec (DESIGN.md section 2) without any pbsq code, used by pbsq's tests:

  pbsfmt.py write DIR   writes a small datastore, prints the expected
                        `pbsq ls -r --json` listing on stdout
  pbsfmt.py check DIR   checks every finished snapshot: manifest, index
                        checksums and sizes, each chunk's CRC and SHA-256,
                        each blob's SHA-256 and size; exit 1 on any error
  pbsfmt.py corrupt DIR DIGEST   flips one payload byte of a chunk

Compressed blobs are decoded with the zstd command-line tool.
"""
import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib
from datetime import datetime, timezone

MAGIC_PLAIN = bytes.fromhex("42ab3807be8370a1")
MAGIC_ZSTD = bytes.fromhex("31b958426fb6a37f")
MAGIC_ENC = bytes.fromhex("7b6785be222d4cf0")
MAGIC_ENC_ZSTD = bytes.fromhex("e6591bbf0bbfd80b")
FIDX_MAGIC = bytes.fromhex("2f7f41ed91fd0fcd")
DIDX_MAGIC = bytes.fromhex("1c914ea519bab3cd")


def blob(payload):
    return MAGIC_PLAIN + struct.pack("<I", zlib.crc32(payload) & 0xFFFFFFFF) + payload


def unblob(raw):
    if len(raw) < 12:
        raise ValueError("blob truncated")
    magic, crc = raw[:8], struct.unpack("<I", raw[8:12])[0]
    if magic in (MAGIC_ENC, MAGIC_ENC_ZSTD):
        raise ValueError("encrypted")
    payload = raw[12:]
    if zlib.crc32(payload) & 0xFFFFFFFF != crc:
        raise ValueError("bad crc")
    if magic == MAGIC_PLAIN:
        return payload
    if magic == MAGIC_ZSTD:
        return subprocess.run(["zstd", "-d", "-q", "-c"], input=payload, check=True, capture_output=True).stdout
    raise ValueError("bad magic %s" % magic.hex())


def ns_path(ns):
    return "".join("ns/%s/" % c for c in ns.split("/")) if ns else ""


def write_file(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def put_chunk(base, data):
    d = hashlib.sha256(data).digest()
    h = d.hex()
    write_file(os.path.join(base, ".chunks", h[:4], h), blob(data))
    return d


def fidx(base, data, chunk_size):
    digests = [put_chunk(base, data[i:i + chunk_size]) for i in range(0, len(data), chunk_size)]
    csum = hashlib.sha256(b"".join(digests)).digest()
    hdr = bytearray(4096)
    hdr[0:8] = FIDX_MAGIC
    hdr[8:24] = bytes(range(16))
    hdr[24:32] = struct.pack("<q", 1700000000)
    hdr[32:64] = csum
    hdr[64:72] = struct.pack("<Q", len(data))
    hdr[72:80] = struct.pack("<Q", chunk_size)
    return bytes(hdr) + b"".join(digests), csum, len(data)


def didx(base, pieces):
    entries, end = b"", 0
    for p in pieces:
        end += len(p)
        entries += struct.pack("<Q", end) + put_chunk(base, p)
    csum = hashlib.sha256(entries).digest()
    hdr = bytearray(4096)
    hdr[0:8] = DIDX_MAGIC
    hdr[8:24] = bytes(range(16, 32))
    hdr[24:32] = struct.pack("<q", 1700000001)
    hdr[32:64] = csum
    return bytes(hdr) + entries, csum, end


def write(base):
    os.makedirs(os.path.join(base, ".chunks"), exist_ok=True)
    expected = []
    layout = [
        # ns, type, id, time, finished, protected, verify
        ("", "vm", "100", "2024-03-01T10:00:00Z", True, False, None),
        ("", "vm", "100", "2024-03-02T10:00:00Z", True, True, "ok"),
        ("", "ct", "200", "2024-03-01T11:00:00Z", True, False, "failed"),
        ("a", "vm", "100", "2024-02-01T00:00:00Z", True, False, None),
        ("a", "host", "web-1.example", "2024-02-01T00:00:00Z", False, False, None),
        ("a/b", "ct", "300", "2023-12-31T23:59:59Z", True, False, None),
    ]
    os.makedirs(os.path.join(base, "ns", "a", "ns", "b", "ns", "empty"), exist_ok=True)
    for n, (ns, typ, bid, t, finished, protected, verify) in enumerate(layout):
        gdir = os.path.join(base, ns_path(ns), typ, bid)
        write_file(os.path.join(gdir, "owner"), b"root@pam\n")
        sdir = os.path.join(gdir, t)
        os.makedirs(sdir, exist_ok=True)
        disk = (bytes([n + 1]) * 5000) + bytes(3000) + os.urandom(100)
        fraw, fcsum, fsize = fidx(base, disk, 4096)
        write_file(os.path.join(sdir, "drive-scsi0.img.fidx"), fraw)
        draw, dcsum, dsize = didx(base, [b"alpha" * (n + 1), b"beta" * 100, os.urandom(50)])
        write_file(os.path.join(sdir, "root.pxar.didx"), draw)
        conf = blob(b"memory: 2048\n")
        write_file(os.path.join(sdir, "qemu-server.conf.blob"), conf)
        epoch = int(datetime.strptime(t, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp())
        unprotected = {}
        if verify:
            unprotected["verify_state"] = {"state": verify, "upid": "UPID:test"}
        manifest = {
            "backup-type": typ, "backup-id": bid, "backup-time": epoch,
            "files": [
                {"filename": "drive-scsi0.img.fidx", "crypt-mode": "none", "size": fsize, "csum": fcsum.hex()},
                {"filename": "root.pxar.didx", "crypt-mode": "none", "size": dsize, "csum": dcsum.hex()},
                {"filename": "qemu-server.conf.blob", "crypt-mode": "none", "size": len(conf),
                 "csum": hashlib.sha256(conf).hexdigest()},
            ],
            "unprotected": unprotected, "signature": None,
        }
        if finished:
            write_file(os.path.join(sdir, "index.json.blob"), blob(json.dumps(manifest).encode()))
        if protected:
            write_file(os.path.join(sdir, ".protected"), b"")
        expected.append({
            "ns": ns, "backup-type": typ, "backup-id": bid, "backup-time": epoch,
            "time": t, "finished": finished, "protected": protected,
            "verify-state": verify if finished else None,
        })
    json.dump(expected, sys.stdout)


def snapshots(base):
    """Yields (ns_dir, snapshot_dir) for every snapshot directory."""
    for root, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if d != ".chunks"]
        parts = os.path.relpath(root, base).split(os.sep)
        if len(parts) >= 3 and parts[-3] in ("vm", "ct", "host") and parts[-1].endswith("Z"):
            yield root


def check(base):
    errors, checked, chunks = [], 0, 0
    for sdir in sorted(snapshots(base)):
        mpath = os.path.join(sdir, "index.json.blob")
        if not os.path.exists(mpath):
            continue
        checked += 1
        rel = os.path.relpath(sdir, base)
        try:
            m = json.loads(unblob(open(mpath, "rb").read()))
        except Exception as e:  # noqa: BLE001 - report any failure
            errors.append("%s: manifest: %s" % (rel, e))
            continue
        for key in ("backup-type", "backup-id", "backup-time", "files"):
            if key not in m:
                errors.append("%s: manifest lacks %s" % (rel, key))
        for f in m.get("files", []):
            raw = open(os.path.join(sdir, f["filename"]), "rb").read()
            name = f["filename"]
            if name.endswith(".blob"):
                if hashlib.sha256(raw).hexdigest() != f["csum"] or len(raw) != f["size"]:
                    errors.append("%s/%s: blob csum/size mismatch" % (rel, name))
                try:
                    unblob(raw)
                except Exception as e:  # noqa: BLE001
                    errors.append("%s/%s: %s" % (rel, name, e))
                continue
            if name.endswith(".fidx"):
                if raw[:8] != FIDX_MAGIC:
                    errors.append("%s/%s: bad fidx magic" % (rel, name))
                    continue
                size, csize = struct.unpack("<QQ", raw[64:80])
                body = raw[4096:]
                n = (size + csize - 1) // csize
                if len(body) != 32 * n:
                    errors.append("%s/%s: %d digests expected" % (rel, name, n))
                    continue
                digests = [body[i:i + 32] for i in range(0, len(body), 32)]
                lens = [min(csize, size - i * csize) for i in range(n)]
                csum = hashlib.sha256(body).digest()
            elif name.endswith(".didx"):
                if raw[:8] != DIDX_MAGIC:
                    errors.append("%s/%s: bad didx magic" % (rel, name))
                    continue
                body = raw[4096:]
                digests, lens, prev = [], [], 0
                for i in range(0, len(body), 40):
                    end = struct.unpack("<Q", body[i:i + 8])[0]
                    digests.append(body[i + 8:i + 40])
                    lens.append(end - prev)
                    prev = end
                size = prev
                csum = hashlib.sha256(body).digest()
            else:
                errors.append("%s/%s: unknown file type" % (rel, name))
                continue
            if csum != raw[32:64] or csum.hex() != f["csum"]:
                errors.append("%s/%s: index checksum mismatch" % (rel, name))
            if size != f["size"]:
                errors.append("%s/%s: size %d, manifest says %d" % (rel, name, size, f["size"]))
            for d, ln in zip(digests, lens):
                h = d.hex()
                p = os.path.join(base, ".chunks", h[:4], h)
                chunks += 1
                try:
                    data = unblob(open(p, "rb").read())
                except Exception as e:  # noqa: BLE001
                    errors.append("%s/%s: chunk %s: %s" % (rel, name, h, e))
                    continue
                if hashlib.sha256(data).hexdigest() != h:
                    errors.append("%s/%s: chunk %s: digest mismatch" % (rel, name, h))
                if len(data) != ln:
                    errors.append("%s/%s: chunk %s: %d bytes, index says %d" % (rel, name, h, len(data), ln))
    for e in errors:
        print(e)
    print("checked %d snapshots, %d chunk references, %d errors" % (checked, chunks, len(errors)))
    return 1 if errors or checked == 0 else 0


def corrupt(base, digest):
    p = os.path.join(base, ".chunks", digest[:4], digest)
    raw = bytearray(open(p, "rb").read())
    raw[-1] ^= 0x01
    open(p, "wb").write(bytes(raw))


if __name__ == "__main__":
    cmd, base = sys.argv[1], sys.argv[2]
    if cmd == "write":
        write(base)
    elif cmd == "check":
        sys.exit(check(base))
    elif cmd == "corrupt":
        corrupt(base, sys.argv[3])
    else:
        sys.exit("unknown command " + cmd)
