#!/usr/bin/env python3
"""worker.py - Python 3 checkpoint/restart test for libcr-rs.

Run: CR_TEST_GO=/path/to/go CR_TEST_DIR=/tmp/x cr_run python3 worker.py

A worker thread (threading.Thread) computes values f(0), f(1), ... (an
integer hash of the index), appends each to a list and feeds it into a
running sha256 digest (batches of 32, ~14k values/s, so memory and the
final check stay small even for long runs).  The main thread prints READY, then polls for the GO file with
time.sleep(0.001).  After GO it sets a threading.Event, joins the worker and
verifies: list length == worker's own counter, every value == f(index),
sha256 recomputed from the list == the worker's digest, and a second
redundant counter kept by the worker matches.
"""
import hashlib
import os
import sys
import threading
import time

NAME = "worker.py"
BATCH = 32


def fail(what):
    print("FAIL %s: %s" % (NAME, what), flush=True)
    print("FAIL %s: %s" % (NAME, what), file=sys.stderr, flush=True)
    sys.exit(1)


def f(i):
    x = (i * 0x9E3779B1 + 0x7F4A7C15) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & 0xFFFFFFFF
    x ^= x >> 12
    return x & 0x3FFFFFFF  # small int, keeps the list compact


class Worker(threading.Thread):
    def __init__(self):
        super().__init__(name="cr-worker")
        self.stop = threading.Event()
        self.values = []
        self.digest = hashlib.sha256()
        self.count = 0
        self.count2 = 0  # redundant: sum of batch sizes
        self.batches = 0
        self.error = None

    def run(self):
        try:
            i = 0
            while not self.stop.is_set():
                for _ in range(BATCH):
                    v = f(i)
                    self.values.append(v)
                    self.digest.update(v.to_bytes(4, "little"))
                    i += 1
                    self.count = i
                self.count2 += BATCH
                self.batches += 1
                time.sleep(0.002)
        except BaseException as e:  # report, never die silently
            self.error = repr(e)


def main():
    go = os.environ.get("CR_TEST_GO")
    if not go:
        fail("CR_TEST_GO not set")
    w = Worker()
    w.start()
    while w.count == 0:
        time.sleep(0.001)
    ident = w.ident
    print("READY", flush=True)
    polls = 0
    while not os.path.exists(go):
        time.sleep(0.001)
        polls += 1
    w.stop.set()
    w.join(timeout=30)
    if w.is_alive():
        fail("worker thread did not stop")
    if w.error:
        fail("worker raised " + w.error)
    if w.ident != ident:
        fail("worker thread ident changed")
    n = len(w.values)
    if n != w.count or n != w.count2 or n != BATCH * w.batches:
        fail("counts differ: len %d count %d count2 %d batches %d" % (n, w.count, w.count2, w.batches))
    expected = [f(i) for i in range(n)]
    if expected != w.values:
        bad = next(i for i in range(n) if expected[i] != w.values[i])
        fail("value %d wrong" % bad)
    h = hashlib.sha256()
    h.update(b"".join(v.to_bytes(4, "little") for v in w.values))
    if h.hexdigest() != w.digest.hexdigest():
        fail("digest mismatch")
    print("info %s: %d values, %d polls" % (NAME, n, polls), file=sys.stderr, flush=True)
    print("PASS " + NAME, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
