#!/usr/bin/env python3
"""fdatasync latency of an append against an overwrite of preallocated blocks (issue 13).

    python3 bench/sync-latency.py [DIR]     # DIR: a directory on the disk to measure (/tmp)

Writes 3,000 records of 1,400 bytes (about an audit batch) to a fresh file in DIR, each
followed by fdatasync, in three ways: appending (the file grows: ext4 commits the size
change to its journal), overwriting a file zero-filled beforehand (no metadata change), and
overwriting after posix_fallocate (unwritten extents converted as they are written).
Prints mean, p50 and p99 per way; the file is removed.

    python3 bench/sync-latency.py --stalls [DIR] [SECONDS]

Stalls: for SECONDS (10) each, two threads sync as the audit writer does (one appends a
record to a segment file and fdatasyncs it, one overwrites a small anchor file in place
and fdatasyncs it), first on a quiet machine, then beside one busy loop per CPU at nice 19,
then (if allowed) with the syncing process at SCHED_FIFO priority 10 beside the same loops.
Prints, per condition and thread, the syncs, p50, p99, how many took over 5 ms and 10 ms,
the longest, and the share of the wall clock spent inside syncs over 5 ms. Run it on a
quiet machine: on a VM whose I/O completions wait for a busy vCPU to be descheduled, the
busy-loop rows show stalls no priority inside the guest removes.
"""
import os
import sys
import time


def timed_syncs(fd, rec, append, go_on):
    """Writes `rec` (appended, or over the file's start) and fdatasyncs it while
    `go_on(count so far)`; returns each fdatasync's seconds."""
    off = 0
    ts = []
    while go_on(len(ts)):
        os.pwrite(fd, rec, off)
        if append:
            off += len(rec)
        t = time.perf_counter()
        os.fdatasync(fd)
        ts.append(time.perf_counter() - t)
    return ts


def bench(path, mode, n=3000, rec=b"x" * 1400 + b"\n"):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if mode == "zero-filled":
            os.write(fd, b"\0" * (n * len(rec) + 4096))
            os.fsync(fd)
        elif mode == "fallocated":
            os.posix_fallocate(fd, 0, n * len(rec) + 4096)
            os.fsync(fd)
        ts = timed_syncs(fd, rec, True, lambda i: i < n)
    finally:
        os.close(fd)
        os.unlink(path)
    ts.sort()
    print(f"{mode:12s} mean {1e6 * sum(ts) / n:6.1f} us  p50 {1e6 * ts[n // 2]:6.1f}  p99 {1e6 * ts[int(n * .99)]:6.1f}")


def sync_loop(path, seconds, append, out):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    rec = b"x" * 1400 + b"\n" if append else b"h" * 400
    try:
        os.pwrite(fd, rec, 0)
        os.fsync(fd)
        end = time.monotonic() + seconds
        ts = timed_syncs(fd, rec, append, lambda _: time.monotonic() < end)
    finally:
        os.close(fd)
        os.unlink(path)
    out.append(("segment" if append else "anchor", ts))


def stalls(d, seconds, condition):
    import threading
    out = []
    threads = [
        threading.Thread(target=sync_loop, args=(os.path.join(d, f"stall.{os.getpid()}.{k}"), seconds, k == "seg", out))
        for k in ("seg", "head")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, ts in sorted(out):
        n = len(ts)
        s = sorted(ts)
        slow = sum(t for t in ts if t > 0.005)
        print(f"{condition:28s} {name:8s} {n:6d} syncs  p50 {1e6 * s[n // 2]:5.0f} us  p99 {1e6 * s[int(n * .99)]:6.0f} us"
              f"  >5 ms {sum(t > 0.005 for t in ts):4d}  >10 ms {sum(t > 0.01 for t in ts):4d}"
              f"  max {1e3 * s[-1]:6.1f} ms  in >5 ms syncs {100 * slow / seconds:4.1f} % of the time")


def busy_loops(n, seconds):
    import subprocess
    code = f"import time\nend = time.monotonic() + {seconds + 1}\nwhile time.monotonic() < end: pass\n"
    return [subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", code]) for _ in range(n)]


if len(sys.argv) > 1 and sys.argv[1] == "--stalls":
    d = sys.argv[2] if len(sys.argv) > 2 else "/tmp"
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
    cpus = os.cpu_count() or 1
    stalls(d, seconds, "quiet")
    for fifo in (False, True):
        if fifo:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
            except PermissionError:
                print("SCHED_FIFO not allowed here; skipped")
                break
        loops = busy_loops(cpus, seconds)
        time.sleep(0.5)
        stalls(d, seconds, f"{cpus} busy loops (nice 19)" + (", FIFO" if fifo else ""))
        for p in loops:
            p.wait()
else:
    d = sys.argv[1] if len(sys.argv) > 1 else "/tmp"
    for m in ["append", "zero-filled", "fallocated", "append", "zero-filled"]:
        bench(os.path.join(d, f"sync-latency.{os.getpid()}.dat"), m)
