"""Peak resident memory of a whole process tree: the launcher and every child, summed at the same instant.

`wait4`'s ru_maxrss is the largest single process of a tree, not their sum: a job whose
decoder runs in a child process (the default `--decode_isolation subprocess`) has a
second Python with NumPy and Pillow that it never counts. `TreeSampler` reads the RSS of
every process of the tree from /proc at a short interval and keeps the largest total,
what each process held at that moment, and each process's own peak. Summed RSS counts
pages the processes share (libraries) once per process, so the total is an upper bound.
"""

from __future__ import annotations

import os
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
GIB = 2**30


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a process (from /proc/PID/statm), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            # The command name (field 2) is in parentheses and may hold spaces: split after it.
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(root: int) -> list[int]:
    """root and every process below it, from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            parent = _parent(int(name))
            if parent is not None:
                children.setdefault(parent, []).append(int(name))
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, ()))
    return found


def label(pid: int) -> str:
    """What a process is, in a few words: `python -m X` is X, a script its file name."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = [a.decode(errors="replace") for a in handle.read().split(b"\0") if a]
    except OSError:
        argv = []
    if not argv:  # gone, or a zombie
        return f"pid {pid}"
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1]
    if "-c" in argv:
        return "python -c"
    scripts = [a for a in argv[1:] if not a.startswith("-")]
    return os.path.basename(scripts[0] if scripts and "python" in os.path.basename(argv[0]) else argv[0])


class TreeSampler:
    """Samples the RSS of a process tree on a thread until stopped.

    Args:
      root: the tree's top process.
      interval_s: time between samples of the known processes' RSS.
      scan_every: samples between scans of /proc for new children (a scan costs far more
        than reading a few statm files; the job's children live for the whole run).
    """

    def __init__(self, root: int, *, interval_s: float = 0.05, scan_every: int = 10):
        self.root, self.interval_s, self.scan_every = root, interval_s, scan_every
        self.labels: dict[int, str] = {}
        self.peak: dict[int, int] = {}  # pid -> its own largest RSS
        self.peak_total = 0
        self.at_peak: dict[int, int] = {}  # pid -> RSS in the sample of the largest total
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="TreeSampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self, scan: bool) -> None:
        """One sample: every known (and, with scan, newly found) process's RSS at this instant."""
        if scan:
            for pid in descendants(self.root):
                if pid not in self.labels:
                    self.labels[pid] = label(pid)
        now = {}
        for pid in self.labels:
            rss = rss_bytes(pid)
            if rss:
                now[pid] = rss
                self.peak[pid] = max(self.peak.get(pid, 0), rss)
        self.samples += 1
        if sum(now.values()) > self.peak_total:
            self.peak_total, self.at_peak = sum(now.values()), now

    def _run(self) -> None:
        count = 0
        while True:
            self.sample(scan=count % self.scan_every == 0)
            count += 1
            if self._stop.wait(self.interval_s):
                break
        self.sample(scan=False)

    def result(self) -> dict:
        """Peak total and per process (largest first), in GiB, with the number of samples."""
        processes = [
            {
                "pid": pid,
                "process": self.labels[pid],
                "peak_rss_gib": self.peak[pid] / GIB,
                "rss_at_total_peak_gib": self.at_peak.get(pid, 0) / GIB,
            }
            for pid in sorted(self.peak, key=lambda p: -self.peak[p])
        ]
        return {"total_peak_rss_gib": self.peak_total / GIB, "processes": processes, "samples": self.samples}


def by_process(tree: dict) -> dict[str, float]:
    """Process label -> RSS (GiB) at the moment of the tree's peak, processes of one label summed."""
    out: dict[str, float] = {}
    for process in tree["processes"]:
        name = process["process"]
        out[name] = out.get(name, 0.0) + process["rss_at_total_peak_gib"]
    return out


def wait_sampled(process, interval_s: float = 0.05) -> tuple[int, float, dict]:
    """Waits for a Popen while sampling its tree; returns (exit status, wall seconds, tree result)."""
    start = time.perf_counter()
    with TreeSampler(process.pid, interval_s=interval_s) as sampler:
        code = process.wait()
    return code, time.perf_counter() - start, sampler.result()
