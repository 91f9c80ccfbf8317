"""Measured dispatch: which convolution scheme :class:`~hnets.nn.HConv2d` runs, per machine.

The fastest of the dense bank, Gauss's three products and Karatsuba's nine depends
on the CPU (an AVX-512 Xeon and an AVX2-only EPYC disagree), the thread count, the
layer's shape and whether it trains. So, as cuDNN's benchmark mode and Triton's
autotuner do, ``impl="auto"`` times the eligible schemes the first time it meets a
*signature* (channels and orders in and out, kernel, stride, padding, map size,
batch-size bucket, dtype, device, threads, training or inference), keeps the fastest,
and remembers it:

* in memory, for the process;
* on disk, in ``<cache dir>/autotune-<machine>.json`` (``$HNETS_CACHE_DIR``, else
  ``$XDG_CACHE_HOME/hnets`` or ``~/.cache/hnets``), where ``<machine>`` hashes the CPU
  model and flags (or the GPU's name) and the torch version. The file is rewritten
  atomically with what is on disk merged in: two processes tuning at once never
  leave a torn file, and a decision lost to their race is measured again next time.

The candidates are timed interleaved (one untimed call each, then rounds A, B, C, A,
B, C, ...: a slow moment of the machine then hits all of them alike), at least
:data:`MIN_ROUNDS` rounds and more until :data:`BUDGET_S` seconds have passed or
:data:`MAX_ROUNDS` rounds are done; each candidate's median counts. After every round,
a candidate whose fastest call so far (its untimed one included) took over
:data:`DROP_RATIO` times the slowest
call of the leader (the lowest median) is out: it is not called again, and a trial
whose other candidates are all out is decided at once. The timed
calls are the real ones (:func:`begin`, :func:`end`): the first calls of a signature
go round the candidates, each giving the true output and gradients, so measuring
costs only what the slower candidates take beyond the fastest. A training call is
timed through its forward and its backward (see :class:`Ticket`); a fused
:class:`~hnets.nn.HBlock` times an inference call with the nonlinearity and pooling
that read the convolution's products. Where a call cannot be timed that way (a
training input that needs no gradient, a backward that never runs), :func:`choose`
times the candidates in separate calls. Interleaving evens
out a machine that slows down for a moment, not one whose cores other processes keep
busy (threads that wait for a descheduled sibling favour the schemes with fewer,
larger calls): where the system says (Linux's ``/proc/stat``), the measurement also
records how many CPUs other work kept busy meanwhile, and a decision made with fewer
CPUs free than the process has threads is marked ``contended`` and measured again by
the next process that needs it (once per process).
``HNETS_AUTOTUNE=0`` uses the fixed table :func:`table_choice` instead (the test suite
does, so that no result depends on timing); so do traced, compiled and exported
graphs. Every scheme gives the same result up to float round-off (tested), so the
choice changes speed only.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "BUDGET_S",
    "DROP_RATIO",
    "MIN_ROUNDS",
    "MAX_ROUNDS",
    "STALLED_ROUNDS",
    "CONTENDED_CPUS",
    "autotuning",
    "remeasuring",
    "enabled",
    "signature",
    "choose",
    "begin",
    "end",
    "open_trials",
    "synchronize",
    "Ticket",
    "table_choice",
    "cache_path",
    "decisions",
    "clear_memory",
]

#: Seconds spent timing the candidates of one signature (after their untimed calls).
BUDGET_S = 0.25
#: Timed rounds (one call of every candidate each): at least, and at most.
MIN_ROUNDS, MAX_ROUNDS = 3, 9
#: After a round, a candidate whose fastest call (its untimed first call included) took
#: over this many times the leader's slowest is dropped from the trial (never the
#: leader). Chosen by replaying full trials of HNetMNIST
#: (``benchmarks/dispatch_replay.py``, AVX-512 and AVX2): 1.25 cut what tuning costs a
#: run by 34-40% and changed none of 36 choices; 1.1 saved a little more and changed 0-3.
DROP_RATIO = 1.25
#: Rounds of calls that never end (see :func:`begin`) before a trial measures apart.
STALLED_ROUNDS = 2 * (MAX_ROUNDS + 1)
_FORMAT = 1
_lock = threading.Lock()
#: A decision is *contended* when other processes kept more CPUs busy during its
#: measurement than this process's threads left free, by more than this many CPUs.
CONTENDED_CPUS = 0.5
_memory: dict[str, dict[str, Any]] = {}
_trials: dict[str, _Trial] = {}  # on-the-job measurements not decided yet (see begin)
_measured_here: set[str] = set()  # keys this process measured: final for it
_remeasure_all = False  # inside remeasuring()
_loaded_from: Path | None = None
_announced = False  # the process said that it measures (once)
_log = logging.getLogger(__name__)


@contextlib.contextmanager
def autotuning(on: bool) -> Iterator[None]:
    """Measure (``on``) or use the fixed table inside the block, whatever the environment.

    Sets ``HNETS_AUTOTUNE`` for the block (the one switch :func:`enabled` reads) and
    restores it after.
    """
    before = os.environ.get("HNETS_AUTOTUNE")
    os.environ["HNETS_AUTOTUNE"] = "1" if on else "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["HNETS_AUTOTUNE"]
        else:
            os.environ["HNETS_AUTOTUNE"] = before


@contextlib.contextmanager
def remeasuring() -> Iterator[None]:
    """Inside the block, measure every signature again (once) instead of reading the cache.

    What ``hnets tune --again`` runs: decisions already cached (made on a busier day,
    or by an older hnets) are replaced by new measurements.
    """
    global _remeasure_all
    with _lock:
        _measured_here.clear()  # what this process measured before the block too
    before, _remeasure_all = _remeasure_all, True
    try:
        yield
    finally:
        _remeasure_all = before


def enabled() -> bool:
    """Whether ``impl="auto"`` measures (``HNETS_AUTOTUNE`` unset or not 0/false/off/no)."""
    value = os.environ.get("HNETS_AUTOTUNE", "1").strip().lower()
    return value not in ("0", "false", "off", "no")


def signature(
    *,
    in_channels: int,
    out_channels: int,
    in_orders: int,
    out_orders: int,
    kernel_size: int,
    stride: int,
    padding: Any,
    height: int,
    width: int,
    batch: int,
    dtype: torch.dtype,
    device: torch.device,
    training: bool,
) -> str:
    """The key a decision is stored under (a readable string; batch sizes in powers of 2)."""
    bucket = 1 << max(0, math.ceil(math.log2(max(batch, 1))))
    return (
        f"c{in_channels}x{in_orders}->{out_channels}x{out_orders} k{kernel_size} s{stride} "
        f"p{padding} {height}x{width} b{bucket} {str(dtype).replace('torch.', '')} "
        f"{device.type} t{torch.get_num_threads()} {'train' if training else 'infer'}"
    )


def table_choice(
    *,
    in_channels: int,
    out_channels: int,
    in_orders: int,
    out_orders: int,
    pixels: int,
    native: bool,
    karatsuba: bool,
) -> str:
    """The fixed table (``HNETS_AUTOTUNE=0``): what was fastest on the developers' Xeon.

    With the native kernels: Karatsuba where the orders allow it (0..1 both sides) and
    both sides have at least 32 channels; else Gauss from 32 complex streams on the
    smaller side, or from 16 on maps of at most 16 x 16; else the dense bank. Without
    them (Gauss repacked by PyTorch ops): Gauss from 64 streams.
    """
    small = min(in_channels * in_orders, out_channels * out_orders)
    if native:
        if karatsuba and min(in_channels, out_channels) >= 32:
            return "karatsuba"
        return "gauss" if small >= 32 or (small >= 16 and pixels <= 256) else "dense"
    return "gauss" if small >= 64 else "dense"


def choose(key: str, candidates: Sequence[str], run: Callable[[str], Any]) -> str:
    """The fastest of ``candidates`` for ``key``: remembered, else measured with ``run``.

    ``run(candidate)`` performs one call the way the layer will be used (forward, and
    backward when training); its time is what is compared. Used where a real call
    cannot be the trial (see :func:`begin`).
    """
    known = _known(key, candidates)
    if known is not None:
        return known
    _announce()
    probe = _LoadProbe()
    trial = _time(run, candidates)
    return _decide(key, trial, probe.busy_elsewhere())


class Ticket:
    """One real call being timed as a trial of scheme ``name`` for ``key`` (see :func:`begin`).

    An inference call runs from its creation to :func:`end`. A training call has two
    parts: its forward (creation to :meth:`pause`) and its backward (:meth:`resume`,
    when the output's gradient arrives, to :func:`end`, when the input's is ready).
    """

    __slots__ = ("key", "name", "device", "probe", "start", "forward_s", "resumed", "ended")

    def __init__(self, key: str, name: str, device: torch.device) -> None:
        self.key, self.name, self.device = key, name, device
        synchronize(device)  # what was queued before is not this call's
        self.probe = _LoadProbe()
        self.forward_s: float | None = None
        self.resumed: float | None = None
        self.ended = False
        self.start = _now()

    def pause(self) -> None:
        """The forward is over; the backward is timed from :meth:`resume` on."""
        synchronize(self.device)
        self.forward_s = _now() - self.start

    def resume(self) -> None:
        """The backward of the call starts (its output's gradient has arrived)."""
        synchronize(self.device)
        self.resumed = _now()


def begin(
    key: str,
    candidates: Sequence[str],
    device: torch.device,
    fallback: Callable[[str], Any] | None = None,
) -> tuple[str, Ticket | None]:
    """Which scheme this call runs, measuring on the job.

    A remembered decision, with no ticket; else the next candidate of ``key``'s trial,
    with a :class:`Ticket` to hand to :func:`end` once the call is over (inference:
    its output exists; training: its backward has produced the input's gradient).
    The calls are the real ones, so a trial costs only what its slower candidates
    take beyond the fastest: round robin over the candidates (the first call of each
    untimed; a call that never ends is made again), at least :data:`MIN_ROUNDS` timed
    calls each and more until their calls took :data:`BUDGET_S` seconds or
    :data:`MAX_ROUNDS` are done, a candidate far behind the leader dropping out after
    any round (:data:`DROP_RATIO`); then decided as :func:`choose` decides. Where calls
    keep not ending (a training forward whose backward never runs), after
    :data:`STALLED_ROUNDS` rounds of them the trial is dropped for :func:`choose` with
    ``fallback`` (separate calls), if given.
    """
    known = _known(key, candidates)
    if known is not None:
        return known, None
    with _lock:
        trial = _trials.get(key)
        if trial is None or trial.candidates != tuple(candidates):
            trial = _trials[key] = _Trial(candidates)
        trial.begun += 1
        stalled = fallback is not None and trial.begun > STALLED_ROUNDS * len(candidates)
        if stalled:
            del _trials[key]
        name = None if stalled else trial.next()
    if name is None:
        assert fallback is not None  # only a trial with a fallback stalls
        return choose(key, candidates, fallback), None
    _announce()
    return name, Ticket(key, name, device)


def end(ticket: Ticket) -> None:
    """Record the call that ``ticket`` timed; decide ``ticket.key`` once its trial is done."""
    if ticket.ended:
        return  # a second backward through the same graph
    ticket.ended = True
    synchronize(ticket.device)
    seconds = _elapsed(ticket)
    busy = ticket.probe.busy_elsewhere()
    with _lock:
        trial = _trials.get(ticket.key)
        if trial is None or ticket.name not in trial.samples:
            return  # decided meanwhile, or forgotten (clear_memory)
        trial.record(ticket.name, seconds, busy)
        if not trial.done():
            return
        del _trials[ticket.key]
    _decide(ticket.key, trial, trial.busy_cpus())


def open_trials() -> set[str]:
    """The keys whose on-the-job trial (:func:`begin`) has not decided yet."""
    with _lock:
        return set(_trials)


class _Trial:
    """The calls of one key's measurement so far (on the job, or in separate calls)."""

    def __init__(self, candidates: Sequence[str]) -> None:
        self.candidates = tuple(candidates)
        self.active = list(candidates)  # not dropped (see DROP_RATIO)
        self.begun = 0  # calls handed out, ended or not
        self.warm: dict[str, float] = {}  # the untimed first calls' seconds
        self.samples: dict[str, list[float]] = {name: [] for name in candidates}
        self.timed = 0.0  # seconds of the timed calls
        self.busy: float | None = 0.0  # CPU-seconds other work used meanwhile

    def next(self) -> str:
        """The candidate still in with the fewest recorded calls (the first of them):
        round robin, in which a call that went unrecorded is made again."""
        return min(self.active, key=lambda n: (n in self.warm) + len(self.samples[n]))

    def record(self, name: str, seconds: float, busy: float | None = None) -> None:
        if name not in self.warm:
            # its first call (allocations, first-touch, filter synthesis): not a sample,
            # but a second chance not to drop out (see below)
            self.warm[name] = seconds
            return
        self.samples[name].append(seconds)
        self.timed += seconds
        self.busy = None if busy is None or self.busy is None else self.busy + busy * seconds
        rounds = self._rounds()
        if rounds:  # a whole round is over: drop who is far behind the leader
            leader = self.leader()
            slowest = max(self.samples[leader])
            # a candidate's fastest call counts its untimed one too: one slow timed call
            # (the machine busy for a moment) does not drop the fastest scheme
            self.active = [
                n
                for n in self.active
                if n == leader or min(self.warm[n], *self.samples[n]) <= DROP_RATIO * slowest
            ]

    def _rounds(self) -> int:
        """Timed calls of every candidate still in, when they are equal (whole rounds), else 0."""
        counts = {len(self.samples[n]) for n in self.active}
        return counts.pop() if len(counts) == 1 else 0

    def leader(self) -> str:
        """The candidate still in with the lowest median (what the trial would choose now)."""
        return min(self.active, key=lambda n: statistics.median(self.samples[n]))

    def done(self) -> bool:
        rounds = self._rounds()  # on whole rounds only
        if not rounds:
            return False
        if len(self.active) == 1:
            return True
        return rounds >= MAX_ROUNDS or (rounds >= MIN_ROUNDS and self.timed >= BUDGET_S)

    def run(self, call: Callable[[str], float]) -> _Trial:
        """Make the trial's calls with ``call(name)``, which returns the call's seconds,
        until it is done; returns ``self``."""
        while not self.done():
            name = self.next()
            self.record(name, call(name))
        return self

    def medians(self) -> dict[str, float]:
        """Every candidate's median, the dropped ones' over the calls they had."""
        return {name: statistics.median(v) for name, v in self.samples.items()}

    def busy_cpus(self) -> float | None:
        return None if self.busy is None else self.busy / max(self.timed, 1e-12)


def _known(key: str, candidates: Sequence[str]) -> str | None:
    """The decision for ``key`` that still holds for ``candidates``, else ``None``."""
    with _lock:
        _load_disk()
        known = _memory.get(key)
        final = key in _measured_here
    # a decision counts only among the candidates it was measured against (a new
    # candidate, such as a scheme added in a later version, is measured again), and
    # one measured while other work kept the CPUs busy only until a process measures
    # it again (once per process: a machine that stays busy is not re-measured per call)
    if (
        known is not None
        and set(known.get("seconds", ())) == set(candidates)
        and (final or not (known.get("contended") or _remeasure_all))
    ):
        return str(known["choice"])
    return None


def _decide(key: str, trial: _Trial, busy: float | None) -> str:
    """Keep ``trial``'s leader for ``key``, in memory and in the cache file; return it.

    The entry records every candidate's median ``seconds`` and, under ``dropped``,
    those that dropped out before the end with the number of timed calls they had.
    """
    choice = trial.leader()
    seconds = {k: round(v, 7) for k, v in trial.medians().items()}
    entry: dict[str, Any] = {"choice": choice, "seconds": seconds}
    dropped = {n: len(trial.samples[n]) for n in trial.candidates if n not in trial.active}
    if dropped:
        entry["dropped"] = dropped
    if busy is not None:
        entry["busy_elsewhere"] = round(busy, 2)
        if busy > max((os.cpu_count() or 1) - torch.get_num_threads(), 0) + CONTENDED_CPUS:
            entry["contended"] = True
    with _lock:
        _memory[key] = entry
        _measured_here.add(key)
        _save_disk({key: entry})
    _log.debug("%s: %s (%s)", key, choice, ", ".join(f"{k} {v:.2e} s" for k, v in seconds.items()))
    return choice


def synchronize(device: torch.device) -> None:
    """Wait for the GPU: its kernels run asynchronously, a timed call is over when they are."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_now = time.perf_counter  # the clock of the trials


def _elapsed(ticket: Ticket) -> float:
    """Seconds of the call: forward and backward for training (see :class:`Ticket`)."""
    now = _now()
    if ticket.forward_s is None:
        return now - ticket.start
    if ticket.resumed is None:  # a backward that started nowhere we saw: forward only
        return ticket.forward_s
    return ticket.forward_s + now - ticket.resumed


def _announce() -> None:
    """Say once per process, at INFO, that the first calls are slower because they measure."""
    global _announced
    if not _announced:
        _announced = True
        _log.info(
            "timing the convolution schemes on this machine (the first calls of each layer "
            "shape are slower; once per machine, cached in %s; `hnets tune` does it ahead)",
            cache_path(),
        )


def decisions() -> dict[str, dict[str, Any]]:
    """What was measured (in this process or read from the cache file): key -> entry."""
    with _lock:
        _load_disk()
        return {k: dict(v) for k, v in _memory.items()}


def clear_memory() -> None:
    """Forget the in-memory decisions (the file stays); the next lookup reads it again."""
    global _loaded_from, _announced
    with _lock:
        _memory.clear()
        _measured_here.clear()
        _trials.clear()
        _loaded_from = None
        _announced = False


def cache_path() -> Path:
    """This machine's decision file."""
    base = os.environ.get("HNETS_CACHE_DIR")
    if base:
        root = Path(base)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hnets"
    return root / f"autotune-{_machine_key()}.json"


class _LoadProbe:
    """How many CPUs other processes kept busy from its creation to :meth:`busy_elsewhere`.

    The whole machine's busy time (``/proc/stat``: every CPU's time outside idle and
    I/O wait) minus this process's own CPU time, per second of wall time. ``None``
    where the system does not say (no ``/proc/stat``: other platforms).
    """

    def __init__(self) -> None:
        self._wall = time.perf_counter()
        self._own = time.process_time()
        self._system = _system_busy_seconds()

    def busy_elsewhere(self) -> float | None:
        system = _system_busy_seconds()
        wall = time.perf_counter() - self._wall
        if system is None or self._system is None or wall <= 0:
            return None
        own = time.process_time() - self._own
        return max(0.0, (system - self._system - own) / wall)


def _system_busy_seconds() -> float | None:
    """CPU seconds every CPU of the machine has spent busy since boot (Linux), else ``None``."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
        ticks = [int(v) for v in fields[1:]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if fields[:1] != ["cpu"] or len(ticks) < 5 or hz <= 0:
        return None
    # user nice system idle iowait irq softirq steal (guest time is inside user/nice)
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / hz


def _time(run: Callable[[str], Any], candidates: Sequence[str]) -> _Trial:
    """The candidates timed in separate calls of ``run``, by the rules of an on-the-job
    trial (:func:`begin`): interleaved rounds after an untimed call each."""

    def timed(name: str) -> float:
        start = _now()
        run(name)
        return _now() - start

    return _Trial(candidates).run(timed)


def _machine_key() -> str:
    """CPU model and flags (or the first GPU's name), torch's version and ISA caps, hashed."""
    # the ISA oneDNN may use and the native kernels' -march change what is fastest
    caps = tuple(os.environ.get(v, "") for v in ("ONEDNN_MAX_CPU_ISA", "HNETS_NATIVE_ARCH"))
    return _hashed_machine(caps)


@functools.cache
def _hashed_machine(caps: tuple[str, ...]) -> str:
    """Read once per process (every convolution call looks its decision up)."""
    parts = [torch.__version__, platform.machine(), *caps]
    try:
        with open("/proc/cpuinfo") as fh:
            lines = fh.readlines()
        parts += [ln for ln in lines if ln.startswith(("model name", "flags"))][:2]
    except OSError:
        parts.append(platform.processor())
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(0))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _load_disk() -> None:
    """Read the decision file once per process (and after :func:`clear_memory`)."""
    global _loaded_from
    path = cache_path()
    if _loaded_from == path:
        return
    _loaded_from = path
    for key, entry in _read(path).items():
        _memory.setdefault(key, entry)


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: measure again (and rewrite it)
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        return {}
    entries = data.get("decisions")
    if not isinstance(entries, dict):
        return {}
    return {
        k: v for k, v in entries.items() if isinstance(v, dict) and isinstance(v.get("choice"), str)
    }


def _save_disk(new: dict[str, dict[str, Any]]) -> None:
    """Merge ``new`` into the file and replace it atomically; a failure only warns."""
    import warnings

    from .._io import atomic_write
    from ..errors import HNetsError

    path = cache_path()
    merged = {**_read(path), **new}
    payload = {"format": _FORMAT, "machine": platform.processor(), "decisions": merged}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as fh:
            json.dump(payload, fh, indent=1, sort_keys=True)
    except (OSError, HNetsError) as exc:  # a read-only home: the decisions stay in memory
        warnings.warn(f"hnets: cannot write {path} ({exc}); tuning stays in memory", stacklevel=3)
