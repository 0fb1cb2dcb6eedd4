"""What starting one gateway costs (issue 26: all spokes up within 10 s). Run as root.

    .venv/bin/python benchmarks/start_cost.py                # N = 1 five times, then N = 12
    .venv/bin/python benchmarks/start_cost.py --repeat 9 --spokes 4

On a small machine a start of many gateways at once is bounded by CPU: each
gateway is two processes (the root monitor and the data plane it forks), and
what one start costs in CPU-seconds, times the number of sites, over the
number of cores, is about how long the last one takes to answer.  So this
prints, per gateway start:

1. N = 1 (``--repeat`` times; the hub runs, one spoke starts alone): the wall
   time from exec to the control socket answering ``status``, and the
   CPU-seconds spent by then (user + system, from /proc, including the
   subprocesses it ran and reaped), the monitor's and the data plane's apart;
   then the time until its tunnel to the hub is up, and the memory the two
   processes cost together then (PSS).
2. N = ``--spokes`` (the hub lab, hub first, then every spoke at once): the
   hub's start alone (it makes a tap per spoke; its time to answer is polled
   every 0.2 s), until the last spoke answered and until all were up, and a
   spoke's CPU-seconds when it answered.

Prints figures only (a shared machine makes them noisy: each goes with the
load average); it never passes or fails.  To compare two checkouts side by
side, run this file with each checkout's interpreter in turn: the gateways
run the ``bridger`` that interpreter imports (the line "bridger from" says
which).  ``--bytecode`` compiles bridger's modules first (into the checkout's
__pycache__ directories): an editable checkout run with PYTHONDONTWRITEBYTECODE compiles every
module at every start, which an installed package never does.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import bridger
from bridger.lab.hub import HUB, HubLab, family

CLK_TCK = os.sysconf("SC_CLK_TCK")
#: How often a starting gateway is asked whether it answers (seconds).
POLL = 0.01


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def own_cpu(pid: int) -> float:
    """CPU-seconds of ``pid`` and the children it reaped (/proc/PID/stat
    utime, stime, cutime, cstime); 0.0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return sum(int(f) for f in fields[11:15]) / CLK_TCK


def pss_kb(pid: int) -> int:
    """Proportional set size of ``pid`` in kB (/proc/PID/smaps_rollup), 0 once gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class Sample:
    """One gateway's start: seconds from exec and CPU-seconds when it first answered."""

    answered: float
    monitor_cpu: float
    plane_cpu: float
    up: float | None = None
    #: Proportional set size of monitor + data plane once up, in MB (what
    #: the two cost together: the pages they share count half in each).
    pss_mb: float | None = None

    @property
    def cpu(self) -> float:
        return self.monitor_cpu + self.plane_cpu


def cpu_split(pid: int) -> tuple[float, float]:
    """(the monitor's, the rest of its family's) CPU-seconds: ``pid`` is the
    monitor (``ip netns exec`` execs the interpreter), its child the data plane."""
    members = family(pid)
    return own_cpu(pid), sum(own_cpu(p) for p in members if p != pid)


def bytecode_note() -> str:
    """Whether bridger's own modules start from cached bytecode (with
    PYTHONDONTWRITEBYTECODE set and no __pycache__, as in an editable checkout
    here, every start compiles them: about a quarter of its CPU)."""
    root = Path(bridger.__file__).parent
    sources = list(root.rglob("*.py"))
    fresh = 0
    for source in sources:
        cached = Path(importlib.util.cache_from_source(str(source)))
        with contextlib.suppress(OSError):
            fresh += cached.stat().st_mtime >= source.stat().st_mtime
    env = "set" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "unset"
    return f"{fresh} of {len(sources)} modules have fresh bytecode; PYTHONDONTWRITEBYTECODE {env}"


def start_one(lab: HubLab, site: int, within: float = 60.0) -> Sample:
    """Start spoke ``site`` alone; its figures when it answered, and until it was up."""
    began = lab.start([site])
    gateway = lab.gateways[site]
    while gateway.status(timeout=1.0) is None:
        if time.monotonic() - began > within:
            raise SystemExit(f"spoke {site} did not answer within {within:g} s\n"
                             f"{lab.logs([site])}")
        time.sleep(POLL)
    answered = time.monotonic() - began
    monitor, plane = cpu_split(gateway.pid)
    up = lab.wait_up(within=within, since=began, step=POLL)
    return Sample(answered, monitor, plane, None if up is None else up.all_up,
                  sum(pss_kb(p) for p in family(gateway.pid)) / 1024)


def measure_one(workdir: Path, repeat: int) -> list[Sample]:
    samples = []
    with HubLab(1, workdir / "one") as lab:
        lab.start_hub()
        for _ in range(repeat):
            samples.append(start_one(lab, 1))
            lab.stop([1])
    return samples


def measure_many(workdir: Path, spokes: int, within: float = 120.0) -> tuple[
        Sample, list[Sample], float, float | None]:
    """Hub first (its sample: a tap per spoke), then every spoke at once: each
    spoke's sample, the time until the last answered and until all were up."""
    with HubLab(spokes, workdir / "many") as lab:
        took = lab.start_hub(within=within)
        hub = Sample(took, *cpu_split(lab.gateways[HUB].pid))
        sites = [s for s in lab.sites if s != HUB]
        began = lab.start(sites)
        answered: dict[int, Sample] = {}
        while len(answered) < len(sites):
            for site in sites:
                if site in answered or lab.gateways[site].status(timeout=1.0) is None:
                    continue
                at = time.monotonic() - began
                monitor, plane = cpu_split(lab.gateways[site].pid)
                answered[site] = Sample(at, monitor, plane)
            if time.monotonic() - began > within:
                raise SystemExit(f"{len(sites) - len(answered)} spokes did not answer "
                                 f"within {within:g} s")
            time.sleep(POLL)
        up = lab.wait_up(within=within, since=began, step=0.05)
        samples = [answered[s] for s in sites]
        return hub, samples, max(s.answered for s in samples), None if up is None else up.all_up


def line(label: str, values: list[float], unit: str) -> str:
    if len(values) > 1:
        return (f"{label:<34} median {statistics.median(values):6.3f} {unit}  "
                f"(min {min(values):.3f}, max {max(values):.3f})")
    return f"{label:<34} {values[0]:6.3f} {unit}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="starts of the lone spoke")
    parser.add_argument("--spokes", type=int, default=12, help="spokes started at once"
                        " (0: skip)")
    parser.add_argument("--bytecode", action="store_true",
                        help="compile bridger's modules first (into its __pycache__"
                             " directories, which git ignores), as an installed package has"
                             " them")
    args = parser.parse_args(argv)
    if args.bytecode:
        subprocess.run([sys.executable, "-m", "compileall", "-q",
                        str(Path(bridger.__file__).parent)], check=True)
    print(f"bridger from {Path(bridger.__file__).parent}; {os.cpu_count()} CPUs; "
          f"{bytecode_note()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bridger-start-") as tmp:
        work = Path(tmp)
        # `python -m bridger` puts the working directory first on the path: out
        # of any checkout, the gateways run the bridger this interpreter imports.
        os.chdir(work)
        if args.repeat > 0:
            print(f"\nN = 1, {args.repeat} starts (load {load_average()})", flush=True)
            one = measure_one(work, args.repeat)
            print(line("exec -> status answers", [s.answered for s in one], "s"))
            print(line("CPU by then, monitor + data plane", [s.cpu for s in one], "s"))
            print(line("  the monitor (and what it ran)", [s.monitor_cpu for s in one], "s"))
            print(line("  the data plane after the fork", [s.plane_cpu for s in one], "s"))
            ups = [s.up for s in one if s.up is not None]
            if ups:
                print(line("exec -> tunnel up", ups, "s"))
            pss = [s.pss_mb for s in one if s.pss_mb is not None]
            if pss:
                print(line("PSS once up, monitor + data plane", pss, "MB"))
            print(f"(load after: {load_average()})", flush=True)
        if args.spokes > 0:
            print(f"\nN = {args.spokes}: the hub, then every spoke at once "
                  f"(load {load_average()})", flush=True)
            hub, many, last, up = measure_many(work, args.spokes)
            print(f"{'the hub alone: answers':<34} {hub.answered:6.3f} s, CPU {hub.cpu:.3f} s")
            print(line("exec -> status answers", [s.answered for s in many], "s"))
            print(line("CPU by then, monitor + data plane", [s.cpu for s in many], "s"))
            print(f"{'the last spoke answered':<34} {last:6.3f} s")
            print(f"{'all spokes up':<34} " + ("not within the time" if up is None
                                               else f"{up:6.3f} s"))
            print(f"(load after: {load_average()})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
