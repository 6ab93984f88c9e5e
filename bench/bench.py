#!/usr/bin/env python3
"""libcr-rs benchmark (issue 11): `make bench` / `make bench-smoke`.

In one run on one file system (the directory given by --dir):
  * the raw baseline: writing the same bytes with and without O_DIRECT (8 MiB writes, fdatasync),
    reading them hot (page cache) and cold (after drop_caches, when permitted);
  * for each workload (1 GiB random, 4 GiB random, the same under `cr_run --huge-pages`, 1 and
    4 GiB random "scattered" (every page first touched in a shuffled order: not physically
    contiguous, as a long-running process's memory), 4 GiB with 16 MiB touched, 1 GiB highly compressible, a 64-thread program, a 10-process tree):
    checkpoint time (cr_checkpoint started -> exited, i.e. request -> durable image), the stop
    time (the longest gap in the
    workload's own per-step timestamps), the image size, restart -> first step (image hot in the
    page cache, and cold when caches can be dropped; lazy, the default, which maps the memory from
    the image, and `cr_restart --eager`, which reads all of it first), the agent's peak extra
    memory (growth of VmHWM over the checkpoint, summed over the processes); for `--cow`, a
    bare fork() of the workload holding the same memory, timed alternately with each checkpoint
    (the stop's physical floor: the page-table copy), and the stop's ratio to it;
  * the idle costs: a compute program (pthread and OpenMP) with and without cr_run, and N
    fork+exec of /bin/true with and without the agent;
  * the same workloads through CRIU (`criu`) and DMTCP (`dmtcp_launch`) when they are on PATH;
  * incremental checkpoints (issue 14): a 4 GiB process (smoke: 64 MiB) that writes 64 MiB
    (smoke: 8 MiB, one word in each page) between a full and a delta checkpoint
    (`cr_checkpoint --incremental`): the delta's size, checkpoint and stop time, and what the
    write-tracking costs the program's write pass; the write-protection cost of a write-heavy
    loop (`wploop`, 64 MiB written per 2 s and per 10 s; smoke: per 0.5 s), from its thread's
    CPU time and faults in intervals after a delta and after a pause alternating in one run;
  * compressed images (issue 14): 1 GiB compressible, text, random and mixed (smoke: 64 MiB,
    mixed 32 MiB)
    checkpointed raw and with `cr_checkpoint --compress`: time, size, CPU per core, `gzip -6` of
    the same bytes, and `cr_restart --eager` of both.
Medians of --reps runs, ratios to the raw baseline. Writes a Markdown report (--out).

Exits non-zero when a checkpoint that should use direct I/O (the file system accepted the
baseline's O_DIRECT write) reports io=buffered in `cr_checkpoint -v`, or a stopped one does not
report write=aio (page data through the AIO ring, `write=aio+bounce(thp)` through the agent's
huge-page bounce ring; `--cow`: the writer's own ring, `write=aio+bounce(thp)`, or its
one-piece buffer, `write=sync(bounce buffer…)`, as builds before its ring did), when a default restart of
an image with enough page data on a local file system does not map it (`cr_restart --verbose`),
or when a step fails.
"""

import argparse
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20
# restore::memory::LAZY_MIN_DATA plus metadata room: every process of an image this large maps.
LAZY_MIN = 40 * MIB


class BenchError(Exception):
    """A step of the benchmark failed; the message says which."""


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    """Runs cmd, returns its stdout; raises BenchError naming it when it fails."""
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise BenchError(f"{' '.join(map(str, cmd))} exited {res.returncode}: {res.stderr.strip()}")
    return res.stdout


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------- building the workloads


def build(outdir):
    """Compiles the C workloads under bench/ into outdir; returns {name: path}."""
    os.makedirs(outdir, exist_ok=True)
    src = os.path.join(ROOT, "bench")
    progs = {
        "workload": (["workload.c"], ["-pthread"]),
        "wploop": (["wploop.c"], []),
        "rawio": (["rawio.c"], []),
        "forkexec": (["forkexec.c"], []),
        # not run by this script: fork vs userfaultfd write-protection (docs/PERFORMANCE.md)
        "wpsnap": (["wpsnap.c"], ["-pthread"]),
        "compute_pthread": (["compute.c"], ["-pthread"]),
        "compute_omp": (["compute.c"], ["-fopenmp", "-DOMP"]),
    }
    out = {}
    for name, (files, flags) in progs.items():
        exe = os.path.join(outdir, name)
        run(["gcc", "-O2", "-Wall", "-o", exe] + [os.path.join(src, f) for f in files] + flags)
        out[name] = exe
    # An empty library: what preloading any library costs, for comparison with the agent.
    out["empty_so"] = os.path.join(outdir, "empty.so")
    run(["gcc", "-shared", "-fPIC", "-x", "c", "-o", out["empty_so"], "-"], input="")
    return out


# ---------------------------------------------------------------- the machine


def read(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def machine(workdir):
    cpu = next((l.split(":", 1)[1].strip() for l in read("/proc/cpuinfo").splitlines()
                if l.startswith("model name")), platform.processor() or "unknown")
    mem = next((l.split()[1] for l in read("/proc/meminfo").splitlines()
                if l.startswith("MemTotal:")), "0")
    try:
        fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", workdir],
                            capture_output=True, text=True).stdout.split()
    except FileNotFoundError:  # util-linux missing
        fs = []
    fstype, source = (fs + ["?", "?"])[:2]
    disk = "unknown"
    if source.startswith("/dev/"):
        dev = os.path.basename(os.path.realpath(source))
        base = re.sub(r"p?\d+$", "", dev) if not os.path.exists(f"/sys/block/{dev}") else dev
        model = read(f"/sys/block/{base}/device/model").strip()
        vendor = read(f"/sys/block/{base}/device/vendor").strip()
        rot = read(f"/sys/block/{base}/queue/rotational").strip()
        size = read(f"/sys/block/{base}/size").strip()
        kind = {"0": "non-rotational", "1": "rotational"}.get(rot, "")
        gib = f"{int(size) * 512 / (1 << 30):.0f} GiB" if size.isdigit() else ""
        desc = " ".join(x for x in [vendor, model] if x) or (
            "virtio block device" if base.startswith("vd") else base)
        disk = ", ".join(x for x in [f"/dev/{base}", desc, gib, kind] if x)
    code = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "stubs",
                            "Cargo.toml", "Cargo.lock", "bench"],
                           capture_output=True, text=True).stdout.strip()
    return {
        "code": f"commit {code}" + (" with uncommitted changes" if dirty else ""),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": f"{int(mem) / (1 << 20):.1f} GiB",
        "kernel": platform.release(),
        "fs": f"{fstype} on {source} ({workdir})",
        "disk": disk,
    }


def loadavg():
    return read("/proc/loadavg").split()[0] if read("/proc/loadavg") else "?"


# ---------------------------------------------------------------- the raw baseline


def drop_caches():
    """Drops the page cache; False when not permitted."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def baseline(progs, workdir, mib, reps):
    """Raw write/read of mib MiB; returns medians in seconds (None where not measurable)."""
    path = os.path.join(workdir, "raw.dat")
    res = {"direct_write": [], "buffered_write": [], "hot_read": [], "cold_read": [],
           "direct_read": [], "fresh_read": []}
    direct_ok = True
    cold_ok = True
    for _ in range(reps):
        r = subprocess.run([progs["rawio"], "write", path, str(mib), "direct"],
                           capture_output=True, text=True)
        if r.returncode == 3:
            direct_ok = False
        elif r.returncode != 0:
            raise BenchError(f"rawio direct write failed: {r.stderr.strip()}")
        else:
            res["direct_write"].append(float(r.stdout))
        if direct_ok:
            res["direct_read"].append(float(run([progs["rawio"], "read", path, "direct"])))
        os.unlink(path)
        res["buffered_write"].append(float(run([progs["rawio"], "write", path, str(mib),
                                                "buffered"])))
        res["hot_read"].append(float(run([progs["rawio"], "read", path, "buffered"])))
        # What an eager restore cannot avoid: the first touch of the memory it fills.
        res["fresh_read"].append(float(run([progs["rawio"], "read", path, "fresh"])))
        if cold_ok and drop_caches():
            res["cold_read"].append(float(run([progs["rawio"], "read", path, "buffered"])))
        else:
            cold_ok = False
        os.unlink(path)
    out = {k: median(v) for k, v in res.items()}
    out["direct_ok"] = direct_ok
    out["cold_ok"] = cold_ok
    out["mib"] = mib
    return out


# ---------------------------------------------------------------- processes


def tree_pids(pid):
    """pid and all its descendants (through /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in os.listdir(f"/proc/{p}/task") if os.path.isdir(f"/proc/{p}/task") else []:
            todo += [int(c) for c in read(f"/proc/{p}/task/{task}/children").split()]
    return out


def hwm_kib(pid):
    m = re.search(r"VmHWM:\s+(\d+)", read(f"/proc/{pid}/status"))
    return int(m.group(1)) if m else 0


def rss_kib(pid):
    m = re.search(r"VmRSS:\s+(\d+)", read(f"/proc/{pid}/status"))
    return int(m.group(1)) if m else 0


def reset_hwm(pid):
    """Sets pid's VmHWM to its current RSS (`clear_refs` 5); False if not permitted."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# Process groups and pids this run started and has not killed yet: killed on any exit.
LIVE = set()


def kill_all(pids, pgids=()):
    LIVE.difference_update(("g", g) for g in pgids)
    LIVE.difference_update(("p", p) for p in pids)
    for g in pgids:
        try:
            os.killpg(g, signal.SIGKILL)
        except OSError:
            pass
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def wait_gone(pids, timeout=30):
    """Waits until every pid has ended and been reaped (this process is a child subreaper, so
    orphans of the tools end up as its children): a restart needs their pids free."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        if not any(os.path.exists(f"/proc/{p}") for p in pids):
            return
        time.sleep(0.01)
    raise BenchError(f"processes {pids} did not end")


def become_subreaper():
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def steps(path):
    """The workload's step timestamps (seconds, CLOCK_REALTIME)."""
    return [int(l) / 1e9 for l in read(path).split() if l.isdigit()]


def wait_step_after(path, t, timeout):
    """Waits for a step stamped after t; returns its time or None."""
    end = time.time() + timeout
    while time.time() < end:
        later = [s for s in steps(path) if s > t]
        if later:
            return min(later)
        time.sleep(0.002)
    return None


def longest_gap(path, t0, t1):
    """The longest gap between consecutive steps that overlaps [t0, t1]."""
    st = steps(path)
    gaps = [b - a for a, b in zip(st, st[1:]) if b >= t0 and a <= t1]
    return max(gaps) if gaps else None


class Workload:
    """One benchmark workload: its name, arguments and nominal data size; with huge, run under
    `cr_run --huge-pages` (its bare fork: BENCH_THP=1, the workload's own MADV_HUGEPAGE)."""

    def __init__(self, name, args, data_mib, huge=False):
        self.name, self.args, self.data_mib, self.huge = name, args, data_mib, huge


# Workloads at least this large get a raw write right before each stopped checkpoint.
ALT_RAW_MIN_MIB = 256


def workloads(smoke):
    if smoke:
        return [
            Workload("64 MiB random", ["random", "64"], 64),
            Workload("64 MiB random, huge pages", ["random", "64"], 64, huge=True),
            Workload("256 MiB, 16 MiB touched", ["sparse", "256", "16"], 16),
            Workload("64 MiB compressible", ["compressible", "64"], 64),
            Workload("64 threads, 64 MiB", ["random", "64", "64", "64"], 64),
            Workload("10 processes, 8 MiB each", ["random", "8", "8", "0", "10"], 80),
        ]
    return [
        Workload("1 GiB random", ["random", "1024"], 1024),
        Workload("4 GiB random", ["random", "4096"], 4096),
        Workload("4 GiB random, huge pages", ["random", "4096"], 4096, huge=True),
        # The same bytes, every page first touched in a shuffled order: memory that is not
        # physically contiguous, as a long-running process's (bench/workload.c `scattered`).
        Workload("1 GiB random, scattered", ["scattered", "1024"], 1024),
        Workload("4 GiB random, scattered", ["scattered", "4096"], 4096),
        Workload("4 GiB, 16 MiB touched", ["sparse", "4096", "16"], 16),
        Workload("1 GiB compressible", ["compressible", "1024"], 1024),
        Workload("64 threads, 256 MiB", ["random", "256", "256", "64"], 256),
        Workload("10 processes, 100 MiB each", ["random", "100", "100", "0", "10"], 1000),
    ]


def start_workload(cmd, wdir, stepfile, env_extra=None):
    """Starts cmd in its own session in wdir; waits for READY; returns the Popen."""
    env = dict(os.environ, BENCH_STEPS=stepfile, **(env_extra or {}))
    # stdin: /dev/null, not this script's (a terminal would make CRIU want --shell-job).
    p = subprocess.Popen(cmd, cwd=wdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    LIVE.add(("g", p.pid))
    line = p.stdout.readline()
    if line.strip() != "READY":
        kill_all([p.pid], [p.pid])
        raise BenchError(f"{' '.join(cmd)} did not start: {line!r} {p.stderr.read()[:300]}")
    # Let it run a while so the steps before the checkpoint are regular.
    wait_step_after(stepfile, time.time() + 0.2, 5)
    return p


class Sample:
    """One repetition's figures for one workload and one tool."""

    def __init__(self):
        self.ckpt = self.stop = self.size = self.hot = self.cold = self.mem = None
        self.hot_eager = self.cold_eager = None  # cr_restart --eager (hot, cold: lazy)
        self.io = ""
        self.write = ""  # how the page data was written (`write=` of -v)
        self.phases = None  # agent phases (quiesce, meta, data, sync), seconds, summed
        # --cow: the agent's clone3 (`fork=` of -v), a bare fork() of the workload holding the
        # same memory in the same run (median of 3), and AnonHugePages (KiB) of the checkpointed
        # process and of the bare one.
        self.fork_agent = self.fork_bare = self.thp = self.thp_bare = None
        # --cow: the agent's own stop (quiesce to release) and its check of the writer's
        # snapshot (`stop=…ms(fork=…ms check=…ms)` of -v).
        self.stop_agent = self.check_agent = None
        # A stopped checkpoint of a large workload: a raw O_DIRECT write of the image's bytes
        # right before it (seconds, scaled to the image's size), so that its ratio does not
        # carry the disk's own drift between the baseline at the start and this repetition.
        self.raw_alt = None
        self.load = None  # the 1-minute load average after the checkpoint
        self.noise = None  # --cow: the longest step gap in a window after the checkpoint
        self.note = None  # CRIU, DMTCP: why the restart was not measured (the checkpoint was)


def anon_huge_kib(pid):
    """AnonHugePages of pid (KiB, from smaps_rollup), or None."""
    m = re.search(r"AnonHugePages:\s+(\d+)", read(f"/proc/{pid}/smaps_rollup"))
    return int(m.group(1)) if m else None


def bare_fork(progs, wl, wdir):
    """A fork() of the workload itself, without the agent, holding the same memory
    (`BENCH_FORK=3`): the physical floor of a `--cow` stop. Returns (median seconds, KiB in
    transparent huge pages)."""
    env = dict(os.environ, BENCH_STEPS=os.path.join(wdir, "steps-fork"), BENCH_FORK="3",
               **({"BENCH_THP": "1"} if wl.huge else {}))
    r = subprocess.run([progs["workload"]] + wl.args, cwd=wdir, env=env, capture_output=True,
                       text=True, timeout=900)
    m = re.match(r"FORK ([0-9. ]+) THP (-?\d+)$", r.stdout.strip())
    if r.returncode != 0 or not m:
        raise BenchError(f"bare fork of {wl.name} failed: {r.stdout.strip()} {r.stderr.strip()}")
    return median([float(x) / 1e3 for x in m.group(1).split()]), int(m.group(2))


# ---------------------------------------------------------------- libcr-rs


def libcr_once(tools, progs, wl, wdir, base, cold_ok, verbose, cow=False):
    """One checkpoint (and restarts) of wl; with cow, `cr_checkpoint --cow` and no restarts (the
    image is the same kind)."""
    s = Sample()
    stepfile = os.path.join(wdir, "steps")
    img = os.path.join(wdir, "context.img")
    for f in (stepfile, img):
        if os.path.exists(f):
            os.unlink(f)
    # (Index 4 of "random 64" plus the padding was "0": the single-process check below never ran.)
    procs = int(wl.args[4]) if len(wl.args) > 4 else 1
    if cow and procs == 1:
        # Alternating with the checkpoint: the bare fork right before it.
        s.fork_bare, s.thp_bare = bare_fork(progs, wl, wdir)
    raw_alt = None
    if not cow and base["direct_ok"] and wl.data_mib >= ALT_RAW_MIN_MIB:
        # Alternating with the checkpoint: the raw write of the same bytes right before it (the
        # disk's rate drifts by ±15 % within minutes on the benchmark's VM, docs/PERFORMANCE.md).
        raw_path = os.path.join(wdir, "raw-alt.dat")
        r = subprocess.run([progs["rawio"], "write", raw_path, str(wl.data_mib), "direct"],
                           capture_output=True, text=True)
        if os.path.exists(raw_path):
            os.unlink(raw_path)
        if r.returncode == 0:
            raw_alt = float(r.stdout)
    p = start_workload([tools["cr_run"]] + (["--huge-pages"] if wl.huge else [])
                       + [progs["workload"]] + wl.args, wdir, stepfile)
    pids = tree_pids(p.pid)
    LIVE.update(("p", q) for q in pids)
    try:
        if cow and procs == 1:
            s.thp = anon_huge_kib(p.pid)
        if len(pids) < procs:
            time.sleep(0.2)
            pids = tree_pids(p.pid)
            LIVE.update(("p", q) for q in pids)
        hwm0 = {q: hwm_kib(q) for q in pids}
        t0 = time.time()
        r = subprocess.run([tools["cr_checkpoint"], "-v"] + (["--cow"] if cow else [])
                           + ["-f", img, str(p.pid)], capture_output=True, text=True)
        t1 = time.time()
        if r.returncode != 0:
            raise BenchError(f"cr_checkpoint of {wl.name} exited {r.returncode}: {r.stderr.strip()}")
        s.ckpt = t1 - t0
        ios = re.findall(r"io=(direct|buffered\([^)]*\))", r.stderr)
        s.io = "direct" if ios and all(i == "direct" for i in ios) else ", ".join(sorted(set(ios)))
        # How the page data went (`write=aio`, `write=aio+bounce(…)`, `write=sync(…)`): shown
        # beside io= in the table.
        writes = sorted(set(re.findall(r" write=([a-z+]+(?:\([^)]*\))?)", r.stderr)))
        s.phases = tuple(sum(float(v) for v in re.findall(rf"\b{k}=([0-9.]+)ms", r.stderr)) / 1e3
                         for k in ("quiesce", "meta", "data", "sync"))
        if verbose:
            log(r.stderr.strip())
        s.write = ", ".join(writes)
        if base["direct_ok"] and s.io != "direct":
            raise BenchError(
                f"{wl.name}: the file system accepts O_DIRECT but the checkpoint reported "
                f"io={s.io or '(none)'}:\n{r.stderr.strip()}")
        # A stopped direct checkpoint writes its page data through the AIO ring (agent::aio);
        # a copy-on-write writer too, through a bounce ring of its own (or, refused, or a build
        # from before that ring, through its one-piece buffer: write=sync(bounce buffer…)).
        lines = [ln for ln in r.stderr.splitlines() if "io=direct" in ln]
        wrong = [ln for ln in lines
                 if " write=aio" not in ln
                 and not ("mode=cow" in ln and " write=sync(bounce buffer" in ln)]
        if base["direct_ok"] and (not lines or wrong):
            raise BenchError(
                f"{wl.name}: the page data should go through the AIO ring (write=aio; --cow: "
                f"or write=sync(bounce buffer…)), -v said:\n{r.stderr.strip()}")
        if cow and procs == 1 and "mode=cow" not in r.stderr:
            raise BenchError(f"{wl.name}: --cow was not copy-on-write:\n{r.stderr.strip()}")
        fk = re.findall(r"mode=cow stop=([0-9.]+)ms\(fork=([0-9.]+)ms check=([0-9.]+)ms", r.stderr)
        if cow and len(fk) == 1:
            s.stop_agent, s.fork_agent, s.check_agent = (float(x) / 1e3 for x in fk[0])
        wait_step_after(stepfile, t1 + 0.1, 10)
        s.stop = longest_gap(stepfile, t0, t1)
        if cow:
            # What the scheduler does to the steps anyway on this machine: the longest gap in
            # as long a window (at most 5 s) right after the checkpoint.
            w = min(t1 - t0, 5.0)
            wait_step_after(stepfile, t1 + 0.1 + w, w + 10)
            s.noise = longest_gap(stepfile, t1 + 0.1, t1 + 0.1 + w)
        s.load = loadavg()
        s.mem = sum(max(0, hwm_kib(q) - hwm0[q]) for q in pids) * 1024
        s.size = os.stat(img).st_size
        if raw_alt is not None:
            s.raw_alt = raw_alt * s.size / (wl.data_mib * MIB)
    finally:
        kill_all(pids, [p.pid])
        p.wait()
        wait_gone(pids)
    for mode in () if cow else ("lazy", "eager"):
        for which in ("hot", "cold"):
            if which == "hot":
                _warm(img)
            elif not (cold_ok and drop_caches()):
                continue
            args = [tools["cr_restart"], "--verbose"] + (["--eager"] if mode == "eager" else [])
            t2 = time.time()
            rp = subprocess.Popen(args + [img], cwd=wdir, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
            LIVE.add(("g", rp.pid))
            LIVE.update(("p", q) for q in pids)
            first = wait_step_after(stepfile, t2, 120)
            kill_all(pids, [rp.pid])
            rp.kill()
            err = rp.communicate()[1]
            wait_gone(pids)
            if first is None:
                raise BenchError(f"{wl.name}: no step after cr_restart ({err.strip()[:300]})")
            if verbose:
                log(err.strip())
            # Every process with enough page data must have it mapped, unless the file system
            # is not a local one (said by cr_restart --verbose).
            if mode == "lazy" and s.size >= LAZY_MIN * len(pids) and (
                    "mapped from the image" not in err or "read in full (" in err) and (
                    "not a known local one" not in err):
                raise BenchError(f"{wl.name}: a default restart did not map the page data from "
                                 f"the image:\n{err.strip()[:1000]}")
            setattr(s, which if mode == "lazy" else f"{which}_eager", first - t2)
    os.unlink(img)
    return s


class ZSample:
    """One repetition of the compression benchmark for one workload."""

    def __init__(self):
        self.raw_t = self.z_t = self.raw_size = self.z_size = self.cpu = None
        self.gzip_size = self.gzip_t = self.restart_raw = self.restart_z = None
        self.page_raw = self.frames = None
        # The checkpointed process's CPU time (its agent's, mostly: the program is stopped)
        # over the --compress checkpoint, and how its pieces reached the compressor.
        self.agent_cpu = self.via = None


def proc_cpu(pid):
    """User + system CPU time of process pid (all its threads), in seconds."""
    f = read(f"/proc/{pid}/stat").rsplit(")", 1)[-1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK") if len(f) > 12 else 0.0


def compress_once(tools, progs, wl, wdir, verbose):
    """wl checkpointed raw and with `cr_checkpoint --compress` (default level); the CPU time
    of the compressing cr_checkpoint (its threads included); `gzip -6` of the raw image; and
    `cr_restart --eager` (hot) of both images to the first step."""
    s = ZSample()
    stepfile = os.path.join(wdir, "steps")
    raw, z = os.path.join(wdir, "raw.img"), os.path.join(wdir, "z.img")
    for f in (stepfile, raw, z):
        if os.path.exists(f):
            os.unlink(f)
    p = start_workload([tools["cr_run"], progs["workload"]] + wl.args, wdir, stepfile)
    pids = tree_pids(p.pid)
    LIVE.update(("p", q) for q in pids)
    try:
        for img, extra in ((raw, []), (z, ["--compress"])):
            before = proc_cpu(p.pid)
            t0 = time.time()
            c = subprocess.Popen([tools["cr_checkpoint"], "-v"] + extra + ["-f", img, str(p.pid)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            err = c.stderr.read()
            _, status, ru = os.wait4(c.pid, 0)
            t1 = time.time()
            if status != 0:
                raise BenchError(f"cr_checkpoint {' '.join(extra)} of {wl.name}: {err.strip()}")
            if verbose:
                log(err.strip())
            if extra:
                s.z_t, s.cpu = t1 - t0, ru.ru_utime + ru.ru_stime
                s.agent_cpu = proc_cpu(p.pid) - before
                # Never silently: how the pieces reached the compressor (the agent's -v).
                s.via = ("pack" if "via=pack(" in err else
                         "pull, not packed" if "via=pull" in err and "(not packed" in err else
                         "pull" if "via=pull" in err else
                         "pipe, pull refused" if "via=pipe(pull refused)" in err else
                         "pipe" if "zstd=split(" in err or "zstd=piped(" in err else None)
                m = re.search(r"compressed ([0-9.]+) MiB of page data to ([0-9.]+) MiB "
                              r"\((\d+) frames zstd, (\d+) stored raw[^)]*\)", err)
                if m:
                    s.page_raw = float(m.group(1)) * MIB
                    s.frames = (int(m.group(3)), int(m.group(4)))
                elif "zstd=skipped(" in err:
                    s.frames = "written raw"
            else:
                s.raw_t = t1 - t0
    finally:
        kill_all(pids, [p.pid])
        p.wait()
        wait_gone(pids)
    s.raw_size, s.z_size = os.stat(raw).st_size, os.stat(z).st_size
    t0 = time.time()
    g = subprocess.run(f"gzip -6 -c {raw} | wc -c", shell=True, capture_output=True, text=True)
    s.gzip_t = time.time() - t0
    s.gzip_size = int(g.stdout.strip() or 0) or None
    for img, attr in ((raw, "restart_raw"), (z, "restart_z")):
        _warm(img)
        t2 = time.time()
        rp = subprocess.Popen([tools["cr_restart"], "--eager", img], cwd=wdir,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
        LIVE.add(("g", rp.pid))
        LIVE.update(("p", q) for q in pids)
        first = wait_step_after(stepfile, t2, 120)
        kill_all(pids, [rp.pid])
        rp.kill()
        err = rp.communicate()[1]
        wait_gone(pids)
        if first is None:
            raise BenchError(f"{wl.name}: no step after cr_restart --eager ({err.strip()[:300]})")
        setattr(s, attr, first - t2)
    for f in (raw, z):
        os.unlink(f)
    return s


def compress_report(results):
    """The report's section on compressed images."""
    L = ["## Compressed images\n",
         "`cr_checkpoint --compress` (zstd level 1, frames of at most 1 MiB compressed by a "
         "thread per core in cr_checkpoint; the agent samples every 1 MiB piece of its page "
         "data and writes the pieces that look incompressible straight to the file as without "
         "--compress, the rest into a pipe to cr_checkpoint: the whole image raw when they are "
         "7/8 of it, \"written raw\"; mixed workloads: `bench/workload.c` mixedP / ileaveP, P % "
         "random, the rest the compressible pattern) against "
         "the same process checkpointed raw just before. Checkpoint: request → durable image. "
         "CPU: cr_checkpoint's user + system time (all its threads); per core: raw page data ÷ "
         "that CPU time. gzip -6: `gzip -6` of the raw image (its bytes, metadata included), and "
         "how long gzip took on one core. Restart: `cr_restart --eager` (image hot in the page "
         "cache) → the first step of the restored program (a compressed image is decompressed "
         "into place by a thread per core).\n",
         "| workload | checkpoint raw / --compress | slower by | image raw / compressed | "
         "gzip -6 (time) | compressed ÷ gzip | CPU | per core | agent CPU | "
         "frames zstd / raw (via) | restart --eager raw / compressed |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for wl, samples in results:
        m = {k: median([getattr(x, k) for x in samples])
             for k in ("raw_t", "z_t", "raw_size", "z_size", "cpu", "gzip_size", "gzip_t",
                       "restart_raw", "restart_z", "page_raw", "agent_cpu")}
        slower = f"{(m['z_t'] / m['raw_t'] - 1) * 100:+.0f} %" if m["raw_t"] else "–"
        per_core = (f"{m['page_raw'] / m['cpu'] / 1e9:.2f} GB/s"
                    if m["cpu"] and m["page_raw"] else "–")
        gz = (f"{fmt_b(m['gzip_size'])} ({fmt_s(m['gzip_t'])})" if m["gzip_size"] else "–")
        vs = ratio(m["z_size"], m["gzip_size"]) if m["gzip_size"] else "–"
        fr = samples[0].frames
        vias = sorted({x.via for x in samples if x.via})
        via = f" ({', '.join(vias)})" if vias else ""
        L.append(f"| {wl.name} | {fmt_s(m['raw_t'])} / {fmt_s(m['z_t'])} | {slower} | "
                 f"{fmt_b(m['raw_size'])} / {fmt_b(m['z_size'])} | {gz} | {vs} | "
                 f"{fmt_s(m['cpu'])} | {per_core} | {fmt_s(m['agent_cpu'])} | "
                 f"{'–' if not fr else fr if isinstance(fr, str) else f'{fr[0]} / {fr[1]}{via}'} | "
                 f"{fmt_s(m['restart_raw'])} / {fmt_s(m['restart_z'])} |")
    L.append("")
    return L


class IncrSample:
    """One repetition of the incremental checkpoint benchmark."""

    def __init__(self):
        self.full = self.size = self.ckpt = self.stop = self.plain = self.armed = None
        self.phases = None
        # The first delta (written stopped: no delta buffer yet): its checkpoint and stop.
        self.first_ckpt = self.first_stop = None
        # The buffered delta's stop and copy as its agent reports them (-v: mode=buffered).
        self.agent_stop = self.copy = None
        # Agent memory (bytes): the peak RSS during a checkpoint less the program's own RSS
        # before the first one (the delta buffer, kept between checkpoints, included), for the
        # full image and the measured delta; what its agent says it spilled in the stop.
        self.mem_full = self.mem = self.spilled = None


def incremental_once(tools, progs, wdir, mib, dirty_mib, verbose):
    """A mib MiB process of random data: a write pass over dirty_mib MiB (one word per page),
    not tracked; an incremental checkpoint (a full image, which arms write-tracking); the same
    pass, tracked; a first delta checkpoint (written stopped: the agent has no delta buffer
    yet, and sizes one from it); the pass again; then the measured delta checkpoint, whose page
    data goes through the delta buffer (`mode=buffered`, else BenchError). Returns an
    IncrSample, or None (with the reason logged) when the kernel lacks what write-tracking
    needs."""
    s = IncrSample()
    stepfile = os.path.join(wdir, "steps")
    dirtyfile = os.path.join(wdir, "dirty")
    img = os.path.join(wdir, "incr.img")

    def clean():
        for f in [stepfile, dirtyfile, img] + [f"{img}.~{i}~" for i in range(1, 4)]:
            if os.path.exists(f):
                os.unlink(f)
    clean()
    p = start_workload([tools["cr_run"], progs["workload"], "random", str(mib)], wdir, stepfile,
                       {"BENCH_DIRTY_MIB": str(dirty_mib), "BENCH_DIRTY": dirtyfile})
    pids = tree_pids(p.pid)
    LIVE.update(("p", q) for q in pids)

    def write_pass():
        n = len(read(dirtyfile).split())
        os.kill(p.pid, signal.SIGUSR1)
        end = time.time() + 60
        while len(read(dirtyfile).split()) <= n:
            if time.time() > end:
                raise BenchError("the workload did not report its write pass")
            time.sleep(0.002)
        return int(read(dirtyfile).split()[n]) / 1e9

    def checkpoint():
        t0 = time.time()
        r = subprocess.run([tools["cr_checkpoint"], "-v", "--incremental", "-f", img,
                            str(p.pid)], capture_output=True, text=True)
        t1 = time.time()
        if r.returncode != 0:
            raise BenchError(f"cr_checkpoint --incremental exited {r.returncode}: "
                             f"{r.stderr.strip()}")
        if verbose:
            log(r.stderr.strip())
        return t0, t1, r.stderr

    def hwm_from(rss0):
        return max(0, hwm_kib(p.pid) - rss0) * 1024 if hwm_ok else None

    try:
        write_pass()  # the pages exist before the full image is taken
        s.plain = write_pass()
        # (VmHWM reset before each measured checkpoint: the program's own peak, or the full
        # image's, must not hide the delta's.)
        rss0 = rss_kib(p.pid)
        hwm_ok = reset_hwm(p.pid)
        _, _, err = checkpoint()
        s.mem_full = hwm_from(rss0)
        if "write-protect unavailable" in err:
            log(f"  incremental: {err.strip()}")
            return None
        s.full = os.stat(img).st_size
        s.armed = write_pass()
        t0, t1, err = checkpoint()
        if "incr=delta(" not in err:
            raise BenchError(f"the second incremental checkpoint was not a delta:\n{err.strip()}")
        s.first_ckpt = t1 - t0
        wait_step_after(stepfile, t1 + 0.1, 10)
        s.first_stop = longest_gap(stepfile, t0, t1)
        write_pass()
        hwm_ok = hwm_ok and reset_hwm(p.pid)
        t0, t1, err = checkpoint()
        s.mem = hwm_from(rss0)
        if "incr=delta(" not in err:
            raise BenchError(f"the third incremental checkpoint was not a delta:\n{err.strip()}")
        m = re.search(r"spill=([0-9.]+)MiB|([0-9.]+)MiB written stopped", err)
        s.spilled = float(m.group(1) or m.group(2)) * MIB if m else 0
        m = re.search(r"mode=buffered stop=([0-9.]+)ms\(copy=([0-9.]+)ms", err)
        if not m:
            raise BenchError("the second delta was not written through the delta buffer "
                             f"(mode=buffered):\n{err.strip()}")
        s.agent_stop, s.copy = float(m.group(1)) / 1e3, float(m.group(2)) / 1e3
        s.ckpt = t1 - t0
        s.size = os.stat(img).st_size
        s.phases = tuple(sum(float(v) for v in re.findall(rf"\b{k}=([0-9.]+)ms", err)) / 1e3
                         for k in ("quiesce", "meta", "data", "sync"))
        wait_step_after(stepfile, t1 + 0.1, 10)
        s.stop = longest_gap(stepfile, t0, t1)
    finally:
        kill_all(pids, [p.pid])
        p.wait()
        wait_gone(pids)
        clean()
    return s


def incremental_report(bases, incr):
    """The report's section on incremental checkpoints."""
    L = ["## Incremental checkpoints\n",
         "A process of random data writes one word in each page of a part of its memory between "
         "`cr_checkpoint --incremental` checkpoints: the first writes a full image and arms "
         "write-tracking (userfaultfd asynchronous write-protection), the next ones delta images "
         "of the written pages (found with `PAGEMAP_SCAN`). The first delta is written with the "
         "program stopped (its agent has no delta buffer yet: first stop); the measured one, "
         "after another pass, copies its page data into the delta buffer in the stop and is "
         "written after the release (`mode=buffered`; its agent's stop and copy in brackets). "
         "×raw write: the delta checkpoint ÷ a raw O_DIRECT write of the delta's bytes. Write "
         "pass: the program's own time for its pass over the written part, untracked / tracked "
         "(every first write to a protected page is a minor fault); their difference is what "
         "tracking costs per checkpoint interval.\n",
         "Agent memory: the program's peak RSS during the checkpoint (VmHWM, reset just before "
         "it) less its RSS before the first checkpoint: for the delta, the delta buffer it keeps "
         "plus what the checkpoint maps (issue 11: ≤ 64 MiB); spilled: the page data that did "
         "not fit the buffer, written in the stop (`-v`).\n",
         "| process | written | full image | delta image | delta checkpoint | ×raw write | stop "
         "(agent: stop / copy) | first delta: checkpoint / stop | phases q/m/d/s | write pass "
         "untracked / tracked | tracking cost | agent memory full / delta | spilled |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (mib, dirty_mib), samples in incr:
        if not samples:
            L.append(f"| {fmt_b(mib * MIB)} | {fmt_b(dirty_mib * MIB)} | not measurable: the "
                     "kernel lacks userfaultfd write-protect (see the log) | | | | | | | | | | |")
            continue
        m = {k: median([getattr(x, k) for x in samples])
             for k in ("full", "size", "ckpt", "stop", "plain", "armed", "first_ckpt",
                       "first_stop", "agent_stop", "copy", "mem_full", "mem", "spilled")}
        b = pick_base(bases, m["size"])
        w = rate_time(b, m["size"], "direct_write" if b["direct_ok"] else "buffered_write")
        ph = [x.phases for x in samples if x.phases]
        phases = "–" if not ph else " / ".join(
            f"{statistics.median(q[i] for q in ph) * 1000:.0f}" for i in range(4)) + " ms"
        cost = "–" if m["armed"] is None or m["plain"] is None else \
            f"{(m['armed'] - m['plain']) * 1000:.1f} ms"
        L.append(f"| {fmt_b(mib * MIB)} | {fmt_b(dirty_mib * MIB)} | {fmt_b(m['full'])} | "
                 f"{fmt_b(m['size'])} | {fmt_s(m['ckpt'])} | {ratio(m['ckpt'], w)} | "
                 f"{fmt_s(m['stop'])} ({fmt_s(m['agent_stop'])} / {fmt_s(m['copy'])}) | "
                 f"{fmt_s(m['first_ckpt'])} / {fmt_s(m['first_stop'])} | "
                 f"{phases} | {m['plain'] * 1000:.2f} ms / "
                 f"{m['armed'] * 1000:.2f} ms | {cost} | {fmt_b(m['mem_full'])} / "
                 f"{fmt_b(m['mem'])} | {fmt_b(m['spilled'])} |")
    L.append("")
    return L


def wploop_samples(path):
    """wploop's samples: (wall s, thread CPU s, steps, minor faults of its thread)."""
    out = []
    for line in read(path).splitlines():
        f = line.split()
        if len(f) == 4 and all(x.isdigit() for x in f):
            out.append((int(f[0]) / 1e9, int(f[1]) / 1e9, int(f[2]), int(f[3])))
    return out


def wp_rate(samples, windows):
    """Steps per CPU second and per wall second over the samples inside the windows."""
    steps = cpu = wall = 0.0
    for a, b in windows:
        w = [x for x in samples if a <= x[0] <= b]
        if len(w) >= 2:
            steps += w[-1][2] - w[0][2]
            cpu += w[-1][1] - w[0][1]
            wall += w[-1][0] - w[0][0]
    return (steps / cpu if cpu else None, steps / wall if wall else None)


class WpInterval:
    """One running interval of wploop, from the start of a stop to the start of the next: what
    stopped it first (`kind`: "tracked" after an incremental checkpoint, which write-protects
    again; "paused" after SIGSTOP/SIGCONT as long as a checkpoint's stop, which protects
    nothing), its thread's CPU time, steps and minor faults, and its excess CPU time: in the
    64-step windows where a stop's after-effects or faults can be (the first EARLY windows, and
    any window with a fault), the CPU time beyond their steps at the interval's own rate (the
    median CPU per step of its other windows). Taking only those windows keeps the excess free
    of the noise of the whole interval's rate."""

    EARLY = 5

    def __init__(self, kind, samples):
        a, b = samples[0], samples[-1]
        self.kind = kind
        self.cpu, self.steps, self.faults = b[1] - a[1], b[2] - a[2], b[3] - a[3]
        win = [(y[1] - x[1], y[2] - x[2], y[3] - x[3]) for x, y in zip(samples, samples[1:])]
        hit = [k < self.EARLY or f > 0 for k, (_, _, f) in enumerate(win)]
        self.per_step = median([c / n for (c, n, _), h in zip(win, hit) if not h and n > 0])
        self.excess = (sum(c - n * self.per_step for (c, n, _), h in zip(win, hit) if h)
                       if self.per_step else None)


class WpSample:
    """One run of the write-tracking cost benchmark."""

    def __init__(self):
        self.plain_cpu = self.plain_wall = None
        self.intervals = []  # WpInterval, in order
        self.stops = []  # the delta checkpoints' stops (s)
        self.hot = []  # the delta checkpoints' hot pages (left unprotected)


def wp_cost_once(tools, progs, wdir, mib, hot_mib, interval, n):
    """wploop (mib MiB, rewriting its first hot_mib MiB 1 MiB per step at full speed) under
    cr_run. Its step rate untracked (before any checkpoint); then an incremental checkpoint
    (full, arms write-tracking) and n deltas, every `interval` s, with a pause (SIGSTOP, as
    long as the last checkpoint's stop, SIGCONT) `interval` s after each checkpoint: the
    intervals after a checkpoint are tracked (the checkpoint write-protected what it saw
    written, except hot pages), those after a pause are the same program with the same stops
    and nothing protected again (the tracked interval before wrote every page it writes).
    Their difference in the thread's CPU time is what write-protection costs; measured per
    thread CPU second (faults included), it is not disturbed by other load the way wall time
    is, and alternating the two in one run cancels slow drifts of the machine."""
    s = WpSample()
    stepfile = os.path.join(wdir, "wpsteps")
    img = os.path.join(wdir, "wp.img")

    def clean():
        for f in [stepfile, img] + [f"{img}.~{i}~" for i in range(1, n + 3)]:
            if os.path.exists(f):
                os.unlink(f)
    clean()
    env = dict(os.environ, BENCH_STEPS=stepfile)
    p = subprocess.Popen([tools["cr_run"], progs["wploop"], str(mib), str(hot_mib)], cwd=wdir,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    LIVE.add(("g", p.pid))
    pids = [p.pid]
    LIVE.add(("p", p.pid))
    try:
        if p.stdout.readline().strip() != "READY":
            raise BenchError(f"wploop did not start: {p.stderr.read()[:300]}")
        t = time.time()
        time.sleep(1.0 + min(interval, 2.0))
        plain = [(t + 0.5, time.time())]

        def ckpt():
            t0 = time.time()
            r = subprocess.run([tools["cr_checkpoint"], "-v", "--incremental", "--max-chain",
                                str(n + 5), "-f", img, str(p.pid)], capture_output=True,
                               text=True)
            if r.returncode != 0:
                raise BenchError(f"cr_checkpoint --incremental exited {r.returncode}: "
                                 f"{r.stderr.strip()}")
            return t0, time.time(), r.stderr

        def stop_of(t0, t1):
            # The longest gap between wploop's samples (one per 64 steps, a few ms apart)
            # during the checkpoint, less a normal gap.
            sm = [x[0] for x in wploop_samples(stepfile)]
            gaps = [b - a for a, b in zip(sm, sm[1:]) if b >= t0 and a <= t1]
            normal = median([b - a for a, b in zip(sm[-40:], sm[-39:])]) or 0
            return max(0.0, max(gaps) - normal) if gaps else None
        starts = []  # (kind, start of the stop)
        t0, t1, err = ckpt()
        if "write-protect unavailable" in err:
            log(f"  incremental: {err.strip()}")
            return None
        starts.append(("tracked", t0))
        stop = 0.1
        for k in range(n + 1):
            time.sleep(interval)
            starts.append(("paused", time.time()))
            os.kill(p.pid, signal.SIGSTOP)
            time.sleep(stop)
            os.kill(p.pid, signal.SIGCONT)
            time.sleep(interval)
            if k == n:
                break
            t0, t1, err = ckpt()
            if "incr=delta(" not in err:
                raise BenchError(f"not a delta:\n{err.strip()}")
            starts.append(("tracked", t0))
            m = re.search(r"(\d+) hot pages", err)
            s.hot.append(int(m.group(1)) if m else 0)
            time.sleep(0.1)
            stop = stop_of(t0, t1) or stop
            s.stops.append(stop)
        end = time.time()
        samples = wploop_samples(stepfile)
        s.plain_cpu, s.plain_wall = wp_rate(samples, plain)
        bounds = starts + [("end", end)]
        for (kind, a), (_, b) in zip(bounds, bounds[1:]):
            # From the last sample before this stop began to the last one before the next.
            w = [x for x in samples if x[0] < b]
            first = max((i for i, x in enumerate(w) if x[0] < a), default=None)
            if first is None or len(w) - first < 2 * WpInterval.EARLY:
                raise BenchError(f"wploop reported too few steps between {a:.3f} and {b:.3f}")
            s.intervals.append(WpInterval(kind, w[first:]))
    finally:
        kill_all(pids, [p.pid])
        p.wait()
        wait_gone(pids)
        clean()
    return s


def wp_summary(samples, interval):
    """What the tracked and paused intervals of the runs show: a dict of figures. The cost is
    given per CPU second of the program (as measured, at this machine's load: the program got
    `share` of a core) and per `interval` wall seconds (a program with a core of its own,
    which runs the whole interval: the same faults over more steps)."""
    iv = [i for s in samples for i in s.intervals if i.excess is not None]
    tr = [i for i in iv if i.kind == "tracked"]
    pa = [i for i in iv if i.kind == "paused"]
    if not tr or not pa:
        return None
    # A tracked interval "protected" faults on most of what it writes (the checkpoint before
    # it write-protected everything: the full image, the first delta, every 8th delta); a
    # "hot" one left the pages written twice in a row unprotected.
    big = max(i.faults for i in tr)
    prot = [i for i in tr if i.faults > big / 2] if big > 100 else []
    hot = [i for i in tr if i not in prot]
    base = statistics.mean(i.excess for i in pa)
    extra = sum(i.excess for i in tr) - base * len(tr)
    cost = extra / sum(i.cpu for i in tr)
    # Cross-check without the per-window baseline: each tracked interval's CPU per step over
    # the paused interval after it.
    pairs = []
    for s in samples:
        for a, b in zip(s.intervals, s.intervals[1:]):
            if a.kind == "tracked" and b.kind == "paused" and a.steps and b.steps:
                pairs.append((a.cpu / a.steps) / (b.cpu / b.steps) - 1)
    per_fault = [(i.excess - base) / i.faults for i in prot if i.faults]
    stops = [x for s in samples for x in s.stops]
    hotp = [x for s in samples for x in s.hot]
    return {
        "n_tr": len(tr), "n_prot": len(prot), "n_hot": len(hot), "n_pa": len(pa),
        "f_prot": median([i.faults for i in prot]), "f_hot": median([i.faults for i in hot]),
        "f_pa": median([i.faults for i in pa]),
        "x_prot": statistics.mean(i.excess for i in prot) if prot else None,
        "x_hot": statistics.mean(i.excess for i in hot) if hot else None,
        "x_pa": base, "cpu": statistics.mean(i.cpu for i in tr),
        "share": statistics.mean(i.cpu for i in iv) / interval,
        "cost_core": extra / (len(tr) * interval),
        "cost_prot_core": ((statistics.mean(i.excess for i in prot) - base) / interval)
        if prot else None,
        "us_fault": median(per_fault), "cost": cost,
        "cost_prot": ((statistics.mean(i.excess for i in prot) - base)
                      / statistics.mean(i.cpu for i in prot)) if prot else None,
        "paired": median(pairs), "stop": median(stops), "hot_pages": median(hotp),
        "plain": median([s.plain_cpu for s in samples]),
    }


class ChainSample:
    """One repetition of the chain restart benchmark: restart times, chain and merged image."""

    def __init__(self):
        self.chain_bytes = self.full_bytes = None
        self.t = {}  # (image "chain"|"merged", mode "lazy"|"eager") -> seconds


def chain_once(tools, progs, wdir, mib, dirty_mib, links, lazy_reps=5):
    """A mib MiB process of random data: a full incremental checkpoint, then `links` deltas,
    each after a write pass over dirty_mib MiB (one word per page); the chain is folded into
    one full image (`cr_info --merge`), and both are restarted (hot: every file read just
    before), lazily (the default) and with --eager: cr_restart started -> the first step of the
    restored program. The lazy restarts (tens of milliseconds, swinging by as much on a loaded
    machine) are taken lazy_reps times each, chain and merged alternately; s.t holds their
    medians, s.lazy the single runs."""
    s = ChainSample()
    s.lazy = {"chain": [], "merged": []}
    stepfile = os.path.join(wdir, "steps")
    dirtyfile = os.path.join(wdir, "dirty")
    img = os.path.join(wdir, "chain.img")
    merged = os.path.join(wdir, "merged.img")
    backups = [f"{img}.~{i}~" for i in range(1, links + 2)]

    def clean():
        for f in [stepfile, dirtyfile, img, merged] + backups:
            if os.path.exists(f):
                os.unlink(f)
    clean()
    p = start_workload([tools["cr_run"], progs["workload"], "random", str(mib)], wdir, stepfile,
                       {"BENCH_DIRTY_MIB": str(dirty_mib), "BENCH_DIRTY": dirtyfile})
    pids = tree_pids(p.pid)
    LIVE.update(("p", q) for q in pids)
    try:
        def write_pass():
            n = len(read(dirtyfile).split())
            os.kill(p.pid, signal.SIGUSR1)
            end = time.time() + 60
            while len(read(dirtyfile).split()) <= n:
                if time.time() > end:
                    raise BenchError("the workload did not report its write pass")
                time.sleep(0.002)
        for k in range(links + 1):
            if k:
                write_pass()
            r = subprocess.run([tools["cr_checkpoint"], "-v", "--incremental", "--max-chain",
                                str(links + 5), "-f", img, str(p.pid)], capture_output=True,
                               text=True)
            if r.returncode != 0:
                raise BenchError(f"cr_checkpoint --incremental exited {r.returncode}: "
                                 f"{r.stderr.strip()}")
            if k == 0 and "write-protect unavailable" in r.stderr:
                return None
            if k and "incr=delta(" not in r.stderr:
                raise BenchError(f"link {k} was not a delta:\n{r.stderr.strip()}")
    finally:
        kill_all(pids, [p.pid])
        p.wait()
        wait_gone(pids)
    files = [img] + [b for b in backups if os.path.exists(b)]
    if len(files) != links + 1:
        raise BenchError(f"expected {links + 1} images in the chain, found {len(files)}")
    s.chain_bytes = sum(os.stat(f).st_size for f in files)
    r = subprocess.run([os.path.join(os.path.dirname(tools["cr_restart"]), "cr_info"),
                        "--merge", merged, img], capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"cr_info --merge exited {r.returncode}: {r.stderr.strip()}")
    s.full_bytes = os.stat(merged).st_size
    both = [("chain", img, files), ("merged", merged, [merged])]
    runs = []
    for k in range(lazy_reps):
        runs += [(w, pa, f, "lazy") for w, pa, f in (both if k % 2 == 0 else both[::-1])]
    # Eagerly twice each, chain, merged, merged, chain, the faster taken: the first eager
    # restart of a run pays for fresh memory (on this VM 9 s against 3 s for 4 GiB, whichever
    # image came first).
    runs += [(w, pa, f, "eager") for w, pa, f in both + both[::-1]]
    for which, path, warm, mode in runs:
        for f in warm:
            _warm(f)
        args = [tools["cr_restart"], "--verbose"] + (["--eager"] if mode == "eager" else [])
        t2 = time.time()
        rp = subprocess.Popen(args + [path], cwd=wdir, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
        LIVE.add(("g", rp.pid))
        first = wait_step_after(stepfile, t2, 120)
        kill_all(pids, [rp.pid])
        rp.kill()
        err = rp.communicate()[1]
        wait_gone(pids)
        if first is None:
            raise BenchError(f"no step after cr_restart of the {which} image "
                             f"({err.strip()[:300]})")
        if mode == "lazy":
            s.lazy[which].append(first - t2)
            s.t[(which, mode)] = median(s.lazy[which])
        else:
            prev = s.t.get((which, mode))
            s.t[(which, mode)] = first - t2 if prev is None else min(prev, first - t2)
    clean()
    return s


def chain_report(wp, chain):
    """The report's sections on write-tracking cost and restarts from a chain."""
    L = []
    for k, ((mib, hot, interval, n), samples) in enumerate(wp):
        L += [] if k else ["## Write-tracking cost on a write-heavy loop\n",
                           "`bench/wploop.c` under cr_run: a process whose loop rewrites the "
                           "first part of its memory at full speed (1 MiB `memset` per step), "
                           "every page of it once per pass. One run alternates intervals after "
                           "an incremental checkpoint (tracked: a full image, then deltas; each "
                           "write-protects again what it saw written, except hot pages, written "
                           "in each of the last two intervals, which stay unprotected until "
                           "every 8th delta or the next full image protects them again) with "
                           "intervals after a pause of the program as long as a checkpoint's "
                           "stop (SIGSTOP/SIGCONT: nothing protected again). Measured in the "
                           "program's own thread: CPU time (user + system: faults count; "
                           "unlike wall time, not stretched by other load) and minor faults "
                           "(`getrusage`), sampled every 64 steps. Excess CPU of an interval: "
                           "in its windows of 64 steps after the stop (the first five, and any "
                           "with a fault), the CPU time beyond their steps at the interval's "
                           "own rate (the median of its other windows). Write-protection cost: "
                           "the "
                           "tracked intervals' excess less the paused intervals' mean excess, "
                           "over the tracked intervals' CPU time; cross-check: the median over "
                           "adjacent pairs of a tracked interval's CPU per step ÷ the paused "
                           "interval's after it. The checkpoints' stops are not write-protection "
                           "cost (the program is stopped, its CPU time does not run): they cost "
                           "stop ÷ interval of its wall time, shown apart.\n",
                           "Cost per CPU second: as measured, with the program getting the "
                           "share of a core this machine's load left it (fewer steps per "
                           "interval, the same faults); on a core of its own: the same excess "
                           "over the whole interval.\n",
                           "| process | written per interval | interval | the program's share of "
                           "a core | tracked intervals: all protected / hot | faults per "
                           "interval: all protected / hot / paused | excess CPU per interval: "
                           "all protected / hot / paused | µs per fault | write-protection "
                           "cost per CPU s (cross-check) / on a core of its own | the same if "
                           "every interval were all protected | stop per delta, ÷ interval |",
                           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        sm = wp_summary(samples, interval) if samples else None
        if not sm:
            L.append(f"| {fmt_b(mib * MIB)} | not measurable: the kernel lacks userfaultfd "
                     "write-protect | | | | | | | |")
            continue

        def ms(x):
            return "-" if x is None else f"{x * 1000:.1f}"

        def num(x):
            return "-" if x is None else f"{x:.0f}"
        def pct(x, digits=2):
            return "-" if x is None else f"{x * 100:.{digits}f} %"
        us = "-" if sm["us_fault"] is None else f"{sm['us_fault'] * 1e6:.2f}"
        stop = "-" if sm["stop"] is None else f"{ms(sm['stop'])} ms, {pct(sm['stop'] / interval, 1)}"
        L.append(f"| {fmt_b(mib * MIB)} | {fmt_b(hot * MIB)} | {interval:g} s | "
                 f"{pct(sm['share'], 0)} | "
                 f"{sm['n_prot']} / {sm['n_hot']} (and {sm['n_pa']} paused) | "
                 f"{num(sm['f_prot'])} / {num(sm['f_hot'])} / {num(sm['f_pa'])} | "
                 f"{ms(sm['x_prot'])} / {ms(sm['x_hot'])} / {ms(sm['x_pa'])} ms | {us} | "
                 f"**{pct(sm['cost'])}** ({pct(sm['paired'], 1)}) / **{pct(sm['cost_core'])}** | "
                 f"{pct(sm['cost_prot'])} / {pct(sm['cost_prot_core'])} | {stop} |")
        L.append("")
    for (mib, dirty_mib, links), samples in chain:
        L += ["## Restart from a chain of deltas\n",
              f"A {fmt_b(mib * MIB)} process of random data: a full incremental checkpoint, "
              f"then {links} deltas, each after a write pass over {fmt_b(dirty_mib * MIB)}; the "
              "chain folded into one full image with `cr_info --merge` (the equivalent full "
              "image). Restart: `cr_restart [--eager] IMAGE` started → the first step of the "
              "restored program, every file of the chain (or the merged image) read just "
              f"before (hot); lazily {len(samples[0].lazy['chain']) if samples else 0} times "
              "each per chain, alternately, the median taken; eagerly twice each (chain, merged, "
              "merged, chain), the faster taken (the first eager restart of a run pays for fresh "
              "memory).\n",
              "| process | chain | merged image | restart chain lazy / eager | restart merged "
              "lazy / eager | chain ÷ merged, lazy / eager |",
              "| --- | --- | --- | --- | --- | --- |"]
        if not samples:
            L.append("| not measurable: the kernel lacks userfaultfd write-protect | | | | | |")
            continue
        t = {k: median([x.t[k] for x in samples]) for k in samples[0].t}
        L.append(f"| {fmt_b(mib * MIB)} | {links + 1} images, "
                 f"{fmt_b(median([x.chain_bytes for x in samples]))} | "
                 f"{fmt_b(median([x.full_bytes for x in samples]))} | "
                 f"{fmt_s(t[('chain', 'lazy')])} / {fmt_s(t[('chain', 'eager')])} | "
                 f"{fmt_s(t[('merged', 'lazy')])} / {fmt_s(t[('merged', 'eager')])} | "
                 f"{t[('chain', 'lazy')] / t[('merged', 'lazy')]:.2f}× / "
                 f"{t[('chain', 'eager')] / t[('merged', 'eager')]:.2f}× |")
        L.append("")
        for which in ("chain", "merged"):
            L.append(f"Lazy restarts of the {which}: " + "; ".join(
                ", ".join(f"{x * 1000:.0f}" for x in smp.lazy[which]) for smp in samples)
                + " ms.")
        L.append("")
    return L


def _warm(path):
    with open(path, "rb") as f:
        while f.read(8 * MIB):
            pass


# ---------------------------------------------------------------- CRIU and DMTCP
#
# The same workloads through the peers, measured as ours are: the program started the same
# way (its own session, the same step file), checkpoint = the tool's command started -> exited
# plus what makes its image durable (neither CRIU nor DMTCP without gzip syncs its image files:
# each is fdatasync'ed here, and the directory fsync'ed, inside the timed span, as the agent's
# own fdatasync is inside ours; not a global sync(), which would also flush other programs'
# dirty data), the original killed and gone before the restart (CRIU restores the same pids),
# restart = the tool started -> the first step of the restored program, hot (the image read
# once before, as `_warm` does for ours) and cold (after drop_caches). Both peers read all of
# the memory before the program runs on, so their restarts go in the eager columns.

PEER_TIMEOUT = 600  # seconds for one peer command: a hung peer becomes a failed row


def peer_versions():
    """{tool: version string} of the peers on PATH (for the report)."""
    out = {}
    for tool, cmd in (("CRIU", ["criu", "--version"]), ("DMTCP", ["dmtcp_launch", "--version"])):
        if not shutil.which(cmd[0]):
            continue
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            txt = (r.stdout + r.stderr).strip()
        except (OSError, subprocess.SubprocessError) as e:
            txt = f"? ({e})"
        # "Version: 4.2" (criu), "dmtcp_launch (DMTCP) 4.2.0" and a license line (DMTCP)
        first = txt.splitlines()[0] if txt else ""
        m = re.search(r"\b([0-9]+\.[0-9]+(?:\.[0-9]+)?)\b", first)
        path = os.path.realpath(shutil.which(cmd[0]))
        out[tool] = f"{m.group(1) if m else first or '?'} ({path})"
    return out


def criu_usable():
    """None when `criu check` passes as this user, else why not."""
    if os.geteuid() != 0:
        return "CRIU needs root here (bench.py is not running as root)"
    try:
        r = subprocess.run(["criu", "check"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        return f"`criu check` failed: {e}"
    if r.returncode != 0:
        return f"`criu check` exited {r.returncode}: {(r.stdout + r.stderr).strip()[-300:]}"
    return None


def sync_dir(d):
    """fdatasyncs every file under d, then fsyncs the directories: the peer's image made
    durable."""
    for top, dirs, files in os.walk(d):
        for f in files:
            fd = os.open(os.path.join(top, f), os.O_RDONLY)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def dir_bytes(d, suffix=""):
    return sum(os.stat(os.path.join(top, f)).st_size
               for top, _, files in os.walk(d) for f in files if f.endswith(suffix))


def warm_dir(d):
    for top, _, files in os.walk(d):
        for f in files:
            _warm(os.path.join(top, f))


def peer_env(wl):
    # A huge-page workload runs under `cr_run --huge-pages` for us; without the agent the
    # workload applies MADV_HUGEPAGE itself (as its bare fork does).
    return {"BENCH_THP": "1"} if wl.huge else {}


def criu_once(progs, wl, wdir, cold_ok):
    s = Sample()
    stepfile = os.path.join(wdir, "steps")
    imgdir = os.path.join(wdir, "criu-img")
    shutil.rmtree(imgdir, ignore_errors=True)
    os.makedirs(imgdir)
    if os.path.exists(stepfile):
        os.unlink(stepfile)
    p = start_workload([progs["workload"]] + wl.args, wdir, stepfile, peer_env(wl))
    pids = tree_pids(p.pid)
    LIVE.update(("p", q) for q in pids)
    try:
        t0 = time.time()
        # The workload is a session leader of its own without a terminal; --shell-job is
        # not needed (it would give the restored tree criu's session).
        run(["criu", "dump", "-t", str(p.pid), "-D", imgdir, "--leave-running",
             "-o", "dump.log", "-v2"], timeout=PEER_TIMEOUT)
        sync_dir(imgdir)
        t1 = time.time()
        s.ckpt = t1 - t0
        wait_step_after(stepfile, t1 + 0.1, 10)
        s.stop = longest_gap(stepfile, t0, t1)
        s.load = loadavg()
        s.size = dir_bytes(imgdir, ".img")
    finally:
        kill_all(pids, [p.pid])
        p.wait()
        wait_gone(pids)
    try:
        for which in ("hot", "cold"):
            if which == "hot":
                warm_dir(imgdir)
            elif not (cold_ok and drop_caches()):
                continue
            t2 = time.time()
            LIVE.update(("p", q) for q in pids)
            try:
                # -d: criu exits once the tree runs (it is reparented to this subreaper).
                run(["criu", "restore", "-D", imgdir, "-d", "-o", f"restore-{which}.log",
                     "-v2"], cwd=wdir, timeout=PEER_TIMEOUT)
                first = wait_step_after(stepfile, t2, 120)
            finally:
                kill_all(pids)
                wait_gone(pids)
            if first is None:
                raise BenchError(f"no step after `criu restore` ({which})")
            setattr(s, f"{which}_eager", first - t2)
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        s.note = f"restore failed: {e}"
        log(f"  CRIU: {wl.name}: {s.note}; logs kept in {imgdir}")
        return s
    shutil.rmtree(imgdir, ignore_errors=True)
    return s


def dmtcp_coordinator(wdir, imgdir):
    """Starts a coordinator of this run's own on a free port (its own session, killed by the
    caller); returns (Popen, port)."""
    portfile = os.path.join(wdir, "dmtcp-port")
    if os.path.exists(portfile):
        os.unlink(portfile)
    c = subprocess.Popen(["dmtcp_coordinator", "--coord-port", "0", "--port-file", portfile,
                          "--ckptdir", imgdir, "--timeout", str(3 * PEER_TIMEOUT), "-q", "-q"],
                         cwd=wdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    LIVE.add(("g", c.pid))
    end = time.time() + 30
    while time.time() < end:
        port = read(portfile).strip()
        if port.isdigit():
            return c, port
        if c.poll() is not None:
            break
        time.sleep(0.01)
    kill_all([], [c.pid])
    c.wait()
    raise BenchError("dmtcp_coordinator did not write its port")


def dmtcp_once(progs, wl, wdir, cold_ok):
    s = Sample()
    stepfile = os.path.join(wdir, "steps")
    imgdir = os.path.join(wdir, "dmtcp-img")
    tmpdir = os.path.join(wdir, "dmtcp-tmp")
    for d in (imgdir, tmpdir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    if os.path.exists(stepfile):
        os.unlink(stepfile)
    coord, port = dmtcp_coordinator(wdir, imgdir)
    cport = ["--coord-host", "127.0.0.1", "--coord-port", port]
    env = dict(peer_env(wl), DMTCP_TMPDIR=tmpdir)

    def command(*what):
        return subprocess.run(["dmtcp_command"] + cport + list(what), capture_output=True,
                              text=True, timeout=PEER_TIMEOUT)

    try:
        p = start_workload(["dmtcp_launch", "--join-coordinator"] + cport
                           + ["--no-gzip", "--ckptdir", imgdir, "-q", "-q", progs["workload"]]
                           + wl.args, wdir, stepfile, env)
        pids = tree_pids(p.pid)
        LIVE.update(("p", q) for q in pids)
        try:
            t0 = time.time()
            r = command("--bcheckpoint")
            tc = time.time()
            if r.returncode != 0:
                raise BenchError(f"dmtcp_command --bcheckpoint exited {r.returncode}: "
                                 f"{(r.stdout + r.stderr).strip()[:300]}")
            sync_dir(imgdir)
            t1 = time.time()
            s.ckpt = t1 - t0
            wait_step_after(stepfile, t1 + 0.1, 10)
            # DMTCP 4.2.0's coordinator does not know the blocking prefix ("b": "unhandled
            # user command") and dmtcp_command then returns at once: a program still
            # stopped when it returned means the time measured is not the checkpoint's.
            st = steps(stepfile)
            before = [x for x in st if x <= tc]
            after = [x for x in st if x > tc]
            if before and after and after[0] - tc > 0.05 and after[0] - before[-1] > 0.1:
                raise BenchError(
                    f"dmtcp_command --bcheckpoint returned {(tc - t0) * 1000:.0f} ms after "
                    f"it started while the program stayed stopped {(after[0] - tc) * 1000:.0f}"
                    " ms longer: not a blocking checkpoint (DMTCP 4.2.0's coordinator, for one, "
                    "ignores the blocking prefix)")
            s.stop = longest_gap(stepfile, t0, t1)
            s.load = loadavg()
            s.size = dir_bytes(imgdir, ".dmtcp")
            if not s.size:
                raise BenchError(f"no .dmtcp image in {imgdir} after --bcheckpoint: "
                                 f"{(r.stdout + r.stderr).strip()[:300]}")
        finally:
            command("--kill")
            kill_all(pids, [p.pid])
            p.wait()
            wait_gone(pids)
        images = sorted(os.path.join(imgdir, f) for f in os.listdir(imgdir)
                        if f.endswith(".dmtcp"))
        try:
            for which in ("hot", "cold"):
                if which == "hot":
                    warm_dir(imgdir)
                elif not (cold_ok and drop_caches()):
                    continue
                t2 = time.time()
                rp = subprocess.Popen(["dmtcp_restart", "--join-coordinator"] + cport
                                      + ["-q", "-q"] + images, cwd=wdir,
                                      env=dict(os.environ, **env),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True)
                LIVE.add(("g", rp.pid))
                try:
                    first = wait_step_after(stepfile, t2, 120)
                finally:
                    # dmtcp_restart becomes the restored process (same pid; the program's own
                    # pid is virtual): the coordinator's kill, then its process group.
                    command("--kill")
                    restored = tree_pids(rp.pid) if os.path.exists(f"/proc/{rp.pid}") else []
                    kill_all(restored, [rp.pid])
                    err = rp.communicate()[1]
                    wait_gone(restored)
                if first is None:
                    raise BenchError(f"no step after dmtcp_restart ({which}): "
                                     f"{err.strip()[-300:]}")
                setattr(s, f"{which}_eager", first - t2)
        except (BenchError, OSError, subprocess.SubprocessError) as e:
            s.note = f"restart failed: {e}"
            log(f"  DMTCP: {wl.name}: {s.note}")
            return s
    finally:
        subprocess.run(["dmtcp_command"] + cport + ["--quit"], capture_output=True, timeout=60)
        kill_all([], [coord.pid])
        coord.wait()
    shutil.rmtree(imgdir, ignore_errors=True)
    shutil.rmtree(tmpdir, ignore_errors=True)
    return s


# ---------------------------------------------------------------- idle costs


def idle(tools, progs, reps, forks, millions):
    """Medians with and without the agent: {name: ((wall, cpu), (wall, cpu), note)}; cpu is
    None where the program does not report it."""
    out = {}
    threads = str(max(2, os.cpu_count() or 2))
    empty = ["env", f"LD_PRELOAD={progs['empty_so']}"]
    # libcr.so preloaded directly, without cr_run's stub (which loads it with dlopen): the
    # difference to the cr_run row is what the stub route costs (issue 11, idle cost).
    direct = ["env", f"LD_PRELOAD={os.path.join(os.path.dirname(tools['cr_run']), 'libcr.so')}"]
    cases = [
        ("compute (pthread)", [progs["compute_pthread"], threads, str(millions)],
         [tools["cr_run"]]),
        ("compute (OpenMP)", [progs["compute_omp"], threads, str(millions)], [tools["cr_run"]]),
        (f"{forks} fork+exec of /bin/true", [progs["forkexec"], str(forks), "/bin/true"],
         [tools["cr_run"]]),
        (f"{forks} fork+exec of /bin/true, an empty library preloaded instead of the agent",
         [progs["forkexec"], str(forks), "/bin/true"], empty),
        (f"{forks} fork+exec of /bin/true, libcr.so preloaded directly instead of through cr_run",
         [progs["forkexec"], str(forks), "/bin/true"], direct),
        (f"{forks} fork without exec (the child exits at once)",
         [progs["forkexec"], str(forks), "-"], [tools["cr_run"]]),
    ]

    def one(cmd):
        f = [float(x) for x in run(cmd).split()]
        return f[0], (f[1] if len(f) > 1 else None)

    for name, cmd, wrap in cases:
        plain, agent = [], []
        for _ in range(reps):  # alternate, so drifting load hits both alike
            plain.append(one(cmd))
            agent.append(one(wrap + cmd))
        out[name] = tuple((median([x[0] for x in xs]), median([x[1] for x in xs]))
                          for xs in (plain, agent))
    return out


# ---------------------------------------------------------------- the report


def fmt_s(x):
    return "–" if x is None else (f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s")


def fmt_b(x):
    if x is None:
        return "–"
    return f"{x / (1 << 30):.2f} GiB" if x >= 1 << 30 else f"{x / MIB:.1f} MiB"


def ratio(x, y):
    return "–" if x is None or not y else f"{x / y:.2f}×"


def alternating(samples):
    """The checkpoint ÷ the raw write made right before it, per repetition: "median× (each)"."""
    rs = [s.ckpt / s.raw_alt for s in samples if s.ckpt and s.raw_alt]
    if not rs:
        return "–"
    return f"{statistics.median(rs):.2f}× ({', '.join(f'{r:.2f}' for r in rs)})"


def rate_time(base, nbytes, key):
    """Time the raw baseline would take for nbytes, at the rate measured by key."""
    t = base.get(key)
    return None if t is None else t * nbytes / (base["mib"] * MIB)


def pick_base(bases, nbytes):
    """The baseline measured at the size nearest nbytes."""
    return min(bases, key=lambda b: abs(b["mib"] * MIB - nbytes))


def report(args, mach, bases, results, incr, idle_res, others, load0, load1, started,
           chain_lines=(), failures=None):
    L = []
    L.append("# Performance\n")
    L.append(f"Measured by `{args.make_target}` (bench/bench.py) on {started} UTC: "
             f"{args.reps} repetition(s) per figure, medians shown. Ratios are to the same run's "
             "raw baseline on the same file system: checkpoint time ÷ a raw O_DIRECT write (8 MiB "
             "writes of a pre-faulted buffer, then fdatasync) of the image's bytes; restart ÷ a "
             "raw buffered read of the image's bytes (hot: from the page cache; cold: after "
             "drop_caches). For sizes other than the baseline's, the raw time is scaled from the "
             "rate measured at the nearest size.\n")
    L.append("## Machine\n")
    for k in ("code", "cpu", "cores", "memory", "kernel", "fs", "disk"):
        L.append(f"- {k}: {mach[k]}")
    for tool, version in sorted(mach.get("peers", {}).items()):
        L.append(f"- {tool}: {version}")
    L.append(f"- load average (1 min) at start / end: {load0} / {load1}"
             + (" — the machine was shared with other work while this ran; figures are noisier "
                "than on an idle machine" if max(float(load0), float(load1)) > 0.5 else ""))
    L.append(f"- run with: `nice -n {args.nice}`" if args.nice else "- not niced")
    L.append("")
    L.append("## Raw baseline\n")
    L.append("| bytes | O_DIRECT write + fdatasync | buffered write + fdatasync | read hot | "
             "read hot into fresh memory | read cold (drop_caches) | O_DIRECT read |")
    L.append("| --- | --- | --- | --- | --- | --- | --- |")
    for b in bases:
        b_mib = b["mib"] * MIB
        rate = (lambda t: "" if not t else f" ({b_mib / t / 1e9:.2f} GB/s)")
        L.append(f"| {fmt_b(b_mib)} | "
                 + (fmt_s(b['direct_write']) + rate(b['direct_write']) if b["direct_ok"]
                    else "O_DIRECT refused by this file system")
                 + f" | {fmt_s(b['buffered_write'])}{rate(b['buffered_write'])}"
                 f" | {fmt_s(b['hot_read'])}{rate(b['hot_read'])} | "
                 f"{fmt_s(b.get('fresh_read'))}{rate(b.get('fresh_read'))} | "
                 + (fmt_s(b["cold_read"]) + rate(b["cold_read"]) if b["cold_ok"]
                    else "cold not measurable (drop_caches not permitted)")
                 + f" | {fmt_s(b['direct_read'])}{rate(b['direct_read'])} |")
    L.append("")
    L.append("## Checkpoint and restart\n")
    L.append("Checkpoint: `cr_checkpoint -v -f IMAGE PID` started → exited (request → durable "
             "image; the program runs on afterwards). Stop: the longest gap in the workload's own "
             "1 ms step timestamps across the checkpoint. Restart: `cr_restart IMAGE` started → "
             "the first step of the restored program, lazy (the default: private memory is mapped "
             "from the image and read as it is touched) / eager (`cr_restart --eager`: all of it "
             "read and checked first). Agent memory: growth of VmHWM (peak RSS) "
             "over the checkpoint, summed over the processes. Phases: the agent's own figures from "
             "`cr_checkpoint -v` (quiesce / metadata / page data / sync, summed over the "
             "processes). io: what the agent reported. `libcr-rs --cow`: `cr_checkpoint --cow` "
             "(copy-on-write: the program runs on while a forked writer writes; the stop is the "
             "state capture, the shared-memory copy and the fork; a cut of several processes "
             "stops once, every member forking its writer in it); its images restore as the others do, so no restart is measured. "
             "Its agent memory does not count the writer process (the snapshot's pages are shared "
             "with the program until either writes them). Last column: the eager hot restart ÷ "
             "the raw hot read of the same bytes into fresh memory (`rawio read FILE fresh`: "
             "memory never touched before, whose allocation and zeroing on first touch every "
             "restore that reads pays, while the raw read's pre-faulted buffer does not). "
             "×raw write, alternating: for a stopped checkpoint of a workload of at least "
             f"{ALT_RAW_MIN_MIB} MiB, each repetition first writes the same bytes raw (O_DIRECT), "
             "right before the checkpoint: the median of the per-repetition ratios, and each "
             "(the disk's rate drifts within minutes, so the ratio to the baseline measured at the "
             "start carries that drift; this one does not)."
             + ("" if not any(t in ("CRIU", "DMTCP") for _, t, _ in results) else " "
             "CRIU: `criu dump -t PID -D DIR --leave-running` started → exited, then every image "
             "file fdatasync'ed (neither peer syncs its images itself; ours is synced by the "
             "agent inside its time), the restart `criu restore -D DIR -d` (the same pids, the "
             "original killed first). DMTCP: the program under `dmtcp_launch --no-gzip` and a "
             "coordinator of the run's own, `dmtcp_command --bcheckpoint` started → exited, then "
             "the image fdatasync'ed, the restart `dmtcp_restart IMAGE`. Both read all of the "
             "memory before the program runs on: their restarts are in the eager columns.") + "\n")
    L.append("| workload | tool | checkpoint | ×raw write | stop | image | restart hot lazy / "
             "eager | ×raw read hot | restart cold lazy / eager | ×raw read cold | agent memory | "
             "phases q/m/d/s | io | eager hot ÷ read into fresh memory | ×raw write, "
             "alternating |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
             "| --- |")
    failures = failures or {}
    notes = []
    for wl, tool, samples in results:
        if not samples:
            why = failures.get((wl.name, tool), "no sample").replace("|", "/").replace("\n", " ")
            L.append(f"| {wl.name} | {tool} | failed: {why[:400]} |" + " – |" * 12)
            continue
        notes += [f"- {tool}, {wl.name}, repetition {i + 1}: {x.note}"
                  for i, x in enumerate(samples) if x.note]
        m = {k: median([getattr(s, k) for s in samples])
             for k in ("ckpt", "stop", "size", "hot", "cold", "mem", "hot_eager", "cold_eager")}
        size = m["size"] or 0
        b = pick_base(bases, size)
        w = rate_time(b, size, "direct_write" if b["direct_ok"] else "buffered_write")
        rh = rate_time(b, size, "hot_read")
        rf = rate_time(b, size, "fresh_read")
        rc = rate_time(b, size, "cold_read")
        spread = ""
        if len(samples) > 1 and m["ckpt"]:
            cks = [s.ckpt for s in samples]
            spread = f" ({fmt_s(min(cks))}–{fmt_s(max(cks))})"
        io = samples[0].io if tool.startswith("libcr-rs") else ""
        ws = sorted({s.write for s in samples if s.write})
        if io and ws:
            io += " (" + "; ".join(ws) + ")"
        ph = [s.phases for s in samples if s.phases]
        phases = "–" if not ph else " / ".join(
            f"{statistics.median(p[i] for p in ph) * 1000:.0f}" for i in range(4)) + " ms"
        def both(k):
            if m[f"{k}_eager"] is None:
                return fmt_s(m[k])
            return f"{fmt_s(m[k])} / {fmt_s(m[k + '_eager'])}"

        def ratios(k, raw):
            if m[f"{k}_eager"] is None:
                return ratio(m[k], raw)
            return f"{ratio(m[k], raw)} / {ratio(m[k + '_eager'], raw)}"
        L.append(f"| {wl.name} | {tool} | {fmt_s(m['ckpt'])}{spread} | {ratio(m['ckpt'], w)} | "
                 f"{fmt_s(m['stop'])} | {fmt_b(m['size'])} | {both('hot')} | "
                 f"{ratios('hot', rh)} | "
                 + (f"{both('cold')} | {ratios('cold', rc)}"
                    if m["cold"] is not None or m["cold_eager"] is not None
                    else "– | –" if m["hot"] is None and m["hot_eager"] is None
                    else "not measurable | –")
                 + f" | {fmt_b(m['mem']) if tool.startswith('libcr-rs') else '–'} | {phases} | "
                 f"{io} | {ratio(m['hot_eager'], rf)} | {alternating(samples)} |")
    L.append("")
    for name, why in others:
        L.append(f"- {name}: {why}")
    L.extend(notes)
    L.append("")
    L.extend(cow_fork_report(results))
    L.extend(incremental_report(bases, incr))
    L.extend(chain_lines)
    L.append("## Idle cost\n")
    L.append("Wall time, and CPU time (the program and its children, user + system) where the "
             "program reports it; CPU time is less disturbed by other load on the machine. The "
             "row with an empty preloaded library shows what loading any extra library costs, "
             "the row with libcr.so preloaded directly what the agent costs without cr_run's "
             "stub.\n")
    L.append("| program | without the agent | under cr_run | ratio | CPU without | CPU under "
             "cr_run | CPU ratio |")
    L.append("| --- | --- | --- | --- | --- | --- | --- |")
    for name, ((pw, pc), (aw, ac)) in idle_res.items():
        per = ""
        if "fork" in name:
            per = f" ({pw / args.forks * 1e3:.3f} / {aw / args.forks * 1e3:.3f} ms each"
            if pc and ac:
                per += f"; CPU {pc / args.forks * 1e3:.3f} / {ac / args.forks * 1e3:.3f} ms"
            per += ")"
        label = name.replace(", an empty library preloaded instead of the agent", "")
        label = label.replace(", libcr.so preloaded directly instead of through cr_run", "")
        with_what = ("empty library preloaded (not the agent)" if "empty library" in name
                     else "libcr.so preloaded directly (no stub)" if "directly" in name else None)
        L.append(f"| {label}{' — ' + with_what if with_what else ''}{per} | "
                 f"{fmt_s(pw)} | {fmt_s(aw)} | {ratio(aw, pw)} | {fmt_s(pc)} | {fmt_s(ac)} | "
                 f"{ratio(ac, pc)} |")
    L.append("")
    return "\n".join(L)


def cow_fork_report(results):
    """The `--cow` rows' stop against a bare fork() of the same memory, measured alternately."""
    rows = [(wl, samples) for wl, tool, samples in results
            if tool == "libcr-rs --cow" and any(s.fork_bare for s in samples)]
    if not rows:
        return []
    L = ["## `--cow` stop against a bare fork\n",
         "Each repetition first times a `fork()` of the workload itself without the agent, "
         "holding the same memory (`BENCH_FORK=3`: the median of 3 forks; a huge-page row's "
         "workload applies `MADV_HUGEPAGE` itself), then checkpoints the workload under "
         "`cr_run` with `--cow`. The fork's page-table copy is the floor of the stop: a ratio "
         "near 1.0× leaves nothing on the agent's side. Stop: the longest gap in the workload's "
         "steps (as above; on a loaded machine it also catches gaps the scheduler makes "
         "anyway); agent stop / fork / check: the agent's own figures "
         "(`stop=…ms(fork=…ms check=…ms)` of `cr_checkpoint -v`: quiesce to release, the "
         "`clone3` of the writer, the wait for its check of the snapshot). Huge pages: "
         "AnonHugePages of the checkpointed process / of the bare one. Gap without checkpoint: "
         "the longest step gap in as long a window (at most 5 s) right after the checkpoint, "
         "what the scheduler does to the steps anyway. Load: the 1-minute load average after "
         "each repetition.\n",
         "| workload | stop | agent stop | agent fork | agent check | bare fork | "
         "stop ÷ bare fork | agent stop ÷ bare fork | huge pages | gap without checkpoint | "
         "load |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for wl, samples in rows:
        def each(k, scale=1):
            xs = [getattr(x, k) for x in samples]
            return ", ".join("–" if v is None else f"{v * scale:.1f}" for v in xs) + " ms"
        stop, bare = median([x.stop for x in samples]), median([x.fork_bare for x in samples])
        astop = median([x.stop_agent for x in samples if x.stop_agent is not None] or [None])
        thp = samples[0].thp, samples[0].thp_bare
        L.append(f"| {wl.name} | {each('stop', 1e3)} | {each('stop_agent', 1e3)} | "
                 f"{each('fork_agent', 1e3)} | {each('check_agent', 1e3)} | "
                 f"{each('fork_bare', 1e3)} | {ratio(stop, bare)} | {ratio(astop, bare)} | "
                 + " / ".join("?" if k is None else fmt_b(k * 1024) for k in thp)
                 + f" | {each('noise', 1e3)} | {', '.join(x.load or '?' for x in samples)} |")
    L.append("")
    return L


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true",
                    help="small sizes (64 MiB), for CI; writes target/bench/PERFORMANCE-smoke.md")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3, smoke 1)")
    ap.add_argument("--dir", default=None,
                    help="work directory on the file system to measure (default target/bench/work)")
    ap.add_argument("--out", default=None, help="report path (default docs/PERFORMANCE.md)")
    ap.add_argument("--forks", type=int, default=None, help="fork+exec count (default 10000)")
    ap.add_argument("--only", default=None, help="run only workloads whose name contains this")
    ap.add_argument("--no-idle", action="store_true", help="skip the idle-cost measurements")
    ap.add_argument("--no-compress", action="store_true",
                    help="skip the --compress rows (e.g. --only \"1 GiB random\" for the "
                         "checkpoint table alone, CRIU and DMTCP rows included)")
    ap.add_argument("--only-tool", default=None,
                    help="run only tools whose name contains this (libcr-rs, --cow, CRIU, DMTCP)")
    ap.add_argument("--nice", type=int, default=int(os.environ.get("BENCH_NICE", "0")),
                    help="the nice level this runs at (only reported)")
    ap.add_argument("--lazy-reps", type=int, default=5,
                    help="lazy restarts of the chain and of the merged image per chain "
                         "(alternating; default 5)")
    ap.add_argument("--chain-mib", type=int, default=4096,
                    help="process size of the chain restart benchmark (default 4096)")
    ap.add_argument("--delta-only", action="store_true",
                    help="of the incremental benchmark, only the delta checkpoint (no "
                         "write-tracking cost, no chain restart)")
    ap.add_argument("--alternate", action="store_true",
                    help="run the workloads repetition by repetition, each in turn (A/B), "
                         "instead of all repetitions of one before the next")
    ap.add_argument("--baseline-mib", default=None,
                    help="sizes of the raw baseline in MiB, comma separated (default 1024,4096; "
                         "smoke 64)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print cr_checkpoint -v output")
    args = ap.parse_args()
    args.reps = args.reps or (1 if args.smoke else 3)
    args.forks = args.forks or (500 if args.smoke else 10000)
    args.make_target = "make bench-smoke" if args.smoke else "make bench"
    # BENCH_TOOLS: another build's cr_run, cr_checkpoint and cr_restart (and its libcr.so beside
    # them), e.g. a copy of main's for an A/B run while this tree is rebuilt.
    rel = os.environ.get("BENCH_TOOLS") or os.path.join(ROOT, "target", "release")
    bdir = os.path.join(ROOT, "target", "bench")
    wdir = os.path.abspath(args.dir or os.path.join(bdir, "work"))
    out = args.out or (os.path.join(bdir, "PERFORMANCE-smoke.md") if args.smoke
                       else os.path.join(ROOT, "docs", "PERFORMANCE.md"))
    tools = {t: os.path.join(rel, t) for t in ("cr_run", "cr_checkpoint", "cr_restart")}
    for t, path in tools.items():
        if not os.access(path, os.X_OK):
            raise BenchError(f"{path} missing: build first (make build)")
    os.makedirs(wdir, exist_ok=True)
    become_subreaper()
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    load0 = loadavg()
    progs = build(bdir)
    mach = machine(wdir)
    log(f"machine: {mach}; load {load0}")
    sizes = sorted({64} if args.smoke else {1024, 4096})
    if args.baseline_mib:
        sizes = sorted({int(x) for x in args.baseline_mib.split(",")})
    bases = []
    for mib in sizes:
        log(f"raw baseline, {mib} MiB")
        bases.append(baseline(progs, wdir, mib, args.reps))
        log(f"  {bases[-1]}")
    cold_ok = bases[0]["cold_ok"]
    others = []
    runners = [("libcr-rs", lambda wl: libcr_once(tools, progs, wl, wdir, bases[0], cold_ok,
                                                  args.verbose)),
               ("libcr-rs --cow", lambda wl: libcr_once(tools, progs, wl, wdir, bases[0], cold_ok,
                                                        args.verbose, cow=True))]
    mach["peers"] = peer_versions()
    why_not = criu_usable() if shutil.which("criu") else None
    if shutil.which("criu") and not why_not:
        runners.append(("CRIU", lambda wl: criu_once(progs, wl, wdir, cold_ok)))
    elif why_not:
        others.append(("CRIU", f"{why_not}: no CRIU rows"))
    else:
        others.append(("CRIU", "`criu` not found on PATH: no CRIU rows"))
    if shutil.which("dmtcp_launch"):
        runners.append(("DMTCP", lambda wl: dmtcp_once(progs, wl, wdir, cold_ok)))
    else:
        others.append(("DMTCP", "`dmtcp_launch` not found on PATH: no DMTCP rows"))
    results = []
    pairs = [(wl, tool, once) for wl in workloads(args.smoke)
             if not (args.only and args.only not in wl.name)
             for tool, once in runners if not (args.only_tool and args.only_tool not in tool)]
    # Default: every repetition of a pair, then the next pair; --alternate: repetition by
    # repetition, each pair in turn (A/B comparisons under a changing load).
    order = ([(i, k) for i in range(args.reps) for k in range(len(pairs))] if args.alternate
             else [(i, k) for k in range(len(pairs)) for i in range(args.reps)])
    got = {k: [] for k in range(len(pairs))}
    failed = set()
    failures = {}
    for i, k in order:
        wl, tool, once = pairs[k]
        if k in failed:
            continue
        log(f"{tool}: {wl.name} ({i + 1}/{args.reps})")
        try:
            got[k].append(once(wl))
        except (BenchError, OSError, subprocess.SubprocessError) as e:
            # A peer's failure is a row of the table (with its reason), not the end of the run.
            if tool.startswith("libcr-rs"):
                raise
            log(f"  {tool} failed: {e}")
            if got[k]:  # the row shows the good repetitions, this says why there are no more
                others.append((tool, f"{wl.name}: repetition {i + 1} failed (the row shows "
                                     f"the {len(got[k])} before it): {e}"))
            else:
                failures[(wl.name, tool)] = str(e)
            failed.add(k)
            continue
        s = got[k][-1]
        if s.fork_bare is not None:
            ms = (lambda x: "–" if x is None else f"{x * 1e3:.1f} ms")
            log(f"  stop {ms(s.stop)} agent fork {ms(s.fork_agent)} bare fork "
                f"{ms(s.fork_bare)} ({ratio(s.stop, s.fork_bare)}) huge pages "
                f"{s.thp} / {s.thp_bare} KiB, agent stop {ms(s.stop_agent)} check "
                f"{ms(s.check_agent)}, step gap without checkpoint {ms(s.noise)}, load "
                f"{loadavg()}")
        log(f"  checkpoint {fmt_s(s.ckpt)} stop {fmt_s(s.stop)} image {fmt_b(s.size)} "
            f"restart hot {fmt_s(s.hot)} cold {fmt_s(s.cold)} (eager: hot "
            f"{fmt_s(s.hot_eager)} cold {fmt_s(s.cold_eager)}) mem {fmt_b(s.mem)} {s.io} {s.write} "
            f"phases {s.phases}"
            + (f" raw write right before {fmt_s(s.raw_alt)} ({ratio(s.ckpt, s.raw_alt)})"
               if s.raw_alt else ""))
    for k, (wl, tool, _) in enumerate(pairs):
        if got[k] or k in failed:
            results.append((wl, tool, got[k]))
    incr, wp, chain = [], [], []
    if not args.only and (not args.only_tool or args.only_tool in "libcr-rs --incremental"):
        mib, dirty_mib = (64, 8) if args.smoke else (4096, 64)
        samples = []
        for i in range(args.reps):
            log(f"libcr-rs --incremental: {mib} MiB, {dirty_mib} MiB written ({i + 1}/{args.reps})")
            x = incremental_once(tools, progs, wdir, mib, dirty_mib, args.verbose)
            if x is None:
                break
            log(f"  full {fmt_b(x.full)} delta {fmt_b(x.size)} checkpoint {fmt_s(x.ckpt)} stop "
                f"{fmt_s(x.stop)} (agent {fmt_s(x.agent_stop)}, copy {fmt_s(x.copy)}) phases "
                f"{x.phases} write pass {x.plain * 1000:.2f} / {x.armed * 1000:.2f} ms agent "
                f"memory full {fmt_b(x.mem_full)} delta {fmt_b(x.mem)} spilled {fmt_b(x.spilled)}"
                f" first delta stop {fmt_s(x.first_stop)}")
            samples.append(x)
        incr.append(((mib, dirty_mib), samples))
    if not args.delta_only and not args.only and (not args.only_tool or args.only_tool in "libcr-rs --incremental"):
        # One run each: it alternates its tracked and paused intervals (n deltas: n + 1 of
        # each, covering the 8-delta cycle of hot pages being protected again).
        wp_cfgs = [(256, 64, 0.5, 7)] if args.smoke else [(1024, 64, 2.0, 15),
                                                           (1024, 64, 10.0, 7)]
        for wp_cfg in wp_cfgs:
            samples = []
            log(f"libcr-rs --incremental: write-tracking cost, {wp_cfg}")
            x = wp_cost_once(tools, progs, wdir, *wp_cfg)
            if x is not None:
                samples.append(x)
                for i in x.intervals:
                    log(f"  {i.kind}: {i.steps} steps, CPU {i.cpu * 1000:.1f} ms, "
                        f"{i.faults} faults, excess {i.excess * 1000:.2f} ms"
                        if i.excess is not None else f"  {i.kind}: no fault-free window")
                sm = wp_summary(samples, wp_cfg[2])
                if sm:
                    log(f"  write-protection cost {sm['cost'] * 100:.2f} % per CPU s, "
                        f"{sm['cost_core'] * 100:.2f} % on a core of its own (paired "
                        f"{sm['paired'] * 100:.1f} %), stops {sm['stop'] * 1000:.0f} ms, "
                        f"hot pages {sm['hot_pages']}, untracked {x.plain_cpu:.0f} steps/CPU s")
            wp.append((wp_cfg, samples))
        ch_cfg = (256, 16, 10) if args.smoke else (args.chain_mib, 64, 10)
        samples = []
        for i in range(args.reps):
            log(f"libcr-rs --incremental: restart from a chain, {ch_cfg} ({i + 1}/{args.reps})")
            x = chain_once(tools, progs, wdir, *ch_cfg, lazy_reps=args.lazy_reps)
            if x is None:
                break
            log(f"  chain {fmt_b(x.chain_bytes)} merged {fmt_b(x.full_bytes)}: {x.t}")
            samples.append(x)
        chain.append((ch_cfg, samples))
    zres = []
    zloads = ([Workload("64 MiB compressible", ["compressible", "64"], 64),
               Workload("64 MiB text", ["text", "64"], 64),
               Workload("64 MiB random", ["random", "64"], 64),
               Workload("32 MiB mixed (1/2 random, 1 MiB blocks)", ["ileave50", "32"], 32)]
              if args.smoke else
              [Workload("1 GiB compressible", ["compressible", "1024"], 1024),
               Workload("1 GiB text", ["text", "1024"], 1024),
               Workload("1 GiB random", ["random", "1024"], 1024),
               Workload("1 GiB mixed (1/4 random, one region)", ["mixed25", "1024"], 1024),
               Workload("1 GiB mixed (3/4 random, one region)", ["mixed75", "1024"], 1024),
               Workload("1 GiB mixed (1/2 random, 1 MiB blocks)", ["ileave50", "1024"], 1024)])
    for wl in zloads:
        if args.no_compress or (args.only and args.only not in wl.name) or (
                args.only_tool and args.only_tool not in "libcr-rs --compress"):
            continue
        samples = []
        for i in range(args.reps):
            log(f"libcr-rs --compress: {wl.name} ({i + 1}/{args.reps})")
            x = compress_once(tools, progs, wl, wdir, args.verbose)
            log(f"  raw {fmt_s(x.raw_t)} {fmt_b(x.raw_size)} compressed {fmt_s(x.z_t)} "
                f"{fmt_b(x.z_size)} cpu {fmt_s(x.cpu)} gzip -6 {fmt_b(x.gzip_size)} "
                f"{fmt_s(x.gzip_t)} frames {x.frames} restart --eager raw "
                f"{fmt_s(x.restart_raw)} compressed {fmt_s(x.restart_z)}")
            samples.append(x)
        zres.append((wl, samples))
    idle_res = {}
    if not args.no_idle:
        log("idle costs")
        idle_res = idle(tools, progs, args.reps, args.forks, 10 if args.smoke else 100)
        log(f"  {idle_res}")
    text = report(args, mach, bases, results, incr, idle_res, others, load0, loadavg(), started,
                  chain_report(wp, chain), failures)
    if zres:
        text = text.rstrip("\n") + "\n\n" + "\n".join(compress_report(zres))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    print(text)
    log(f"wrote {out}")


def cleanup():
    """Kills what this run started and left running (on failure or interruption)."""
    kill_all([p for k, p in list(LIVE) if k == "p"], [g for k, g in list(LIVE) if k == "g"])


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        main()
    except BenchError as e:
        log(f"FAILED: {e}")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        cleanup()
