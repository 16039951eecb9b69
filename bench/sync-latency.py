#!/usr/bin/env python3
"""fdatasync latency of an append against an overwrite of preallocated blocks (issue 13).

    python3 bench/sync-latency.py [DIR]     # DIR: a directory on the disk to measure (/tmp)

Writes 3,000 records of 1,400 bytes (about an audit batch) to a fresh file in DIR, each
followed by fdatasync, in three ways: appending (the file grows: ext4 commits the size
change to its journal), overwriting a file zero-filled beforehand (no metadata change), and
overwriting after posix_fallocate (unwritten extents converted as they are written).
Prints mean, p50 and p99 per way; the file is removed.
"""
import os
import sys
import time


def bench(path, mode, n=3000, rec=b"x" * 1400 + b"\n"):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if mode == "zero-filled":
            os.write(fd, b"\0" * (n * len(rec) + 4096))
            os.fsync(fd)
        elif mode == "fallocated":
            os.posix_fallocate(fd, 0, n * len(rec) + 4096)
            os.fsync(fd)
        off = 0
        ts = []
        for _ in range(n):
            os.pwrite(fd, rec, off)
            off += len(rec)
            t = time.perf_counter()
            os.fdatasync(fd)
            ts.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    ts.sort()
    print(f"{mode:12s} mean {1e6 * sum(ts) / n:6.1f} us  p50 {1e6 * ts[n // 2]:6.1f}  p99 {1e6 * ts[int(n * .99)]:6.1f}")


d = sys.argv[1] if len(sys.argv) > 1 else "/tmp"
for m in ["append", "zero-filled", "fallocated", "append", "zero-filled"]:
    bench(os.path.join(d, f"sync-latency.{os.getpid()}.dat"), m)
