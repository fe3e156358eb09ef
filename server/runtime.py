"""onnxruntime sessions for one graph: the CPU and the CUDA kind behind one interface, and the provider choice.

CUDA is used only when a session really gets it: onnxruntime-gpu lists CUDAExecutionProvider even where the
CUDA libraries are missing and then silently falls back to CPU, so the provider a session ended up with is
what counts. `auto` falls back to CPU with one log line; `cuda` refuses to start.

Both kinds are timed alone at warm-up, at one row and at a full batch (`Cost`): that predicts how long a batch
of n rows runs, which the batcher uses to choose between the event loop and its worker thread. A run timed
inside a busy server would also hold the wait for the GIL after onnxruntime returns, which grows with the
load, not with the batch. So what was timed is kept per architecture (`Measured`): a later version built
alike (a retrained model: the same operators and shapes, other weights) is warmed up but not timed again,
keeping the timings taken alone at start-up instead of timing full batches on every thread count beside the
calls a swap keeps serving (BENCHMARKS.md, "Model versions going live while serving").
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from .config import DeviceError, check_device
from .cpus import available_cpus

SPIN_AFTER_S = 5e-3  # CPU batches predicted to run at least this long use the spinning session (CpuSession)
THREADS_SLACK = 0.1  # more threads must make a full batch more than 10% faster to be used (CpuSession._fastest)
NEVER = 1 << 62  # rows no batch reaches
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
LOOP = "loop"  # Measured.costs' key of the session batches on the event loop run (the only one on CUDA)


@dataclass
class Measured:
    """What warm-up timed for one architecture's graph: each session's Cost (LOOP, or the spinning session's
    thread count) and the worker's intra-op threads with each count's full batch, when measured."""

    costs: dict[str | int, Cost] = field(default_factory=dict)
    threads: tuple[int, dict[int, float]] | None = None


MEASURED: dict[tuple[str, str], Measured] = {}  # by provider and architecture, for the process's lifetime


@dataclass(frozen=True)
class Cost:
    """A session's run time as fixed + per_row * rows, fitted to two timed runs."""

    fixed_s: float
    per_row_s: float

    def rows_within(self, seconds: float, max_rows: int) -> int:
        """The most rows (up to max_rows) of a batch predicted to run within `seconds`."""
        if seconds < self.fixed_s + self.per_row_s:
            return 0
        if self.per_row_s <= 0:
            return max_rows
        return min(max_rows, int((seconds - self.fixed_s) / self.per_row_s))

    def seconds(self, rows: int) -> float:
        return self.fixed_s + self.per_row_s * rows


class Session(Protocol):
    """One graph with one input: `run(x)` for batches on the event loop, `run_on_worker(x)` for batches the
    batcher hands to its worker thread; each returns the graph's outputs, in order."""

    provider: str
    cost: Cost  # set by warm_up

    def run(self, x: np.ndarray) -> list[np.ndarray]: ...

    def run_on_worker(self, x: np.ndarray) -> list[np.ndarray]: ...

    def warm_up(self, row_shape: tuple[int, ...], max_rows: int) -> None: ...

    def measure_heavy(self, row_shape: tuple[int, ...], max_rows: int) -> None:
        """Times what add_heavy needs to choose (CPU: the worker's threads), after warm_up, holding at most one
        session beside the version's own at a time: a version measures every graph before add_heavy builds
        any, so that measuring never holds more than what the version keeps (models.add_heavy)."""
        ...

    def add_heavy(self, row_shape: tuple[int, ...], max_rows: int) -> None:
        """Builds and warms what only heavy batches use (CPU: the spinning session; CUDA: nothing), after
        measure_heavy: until then every batch runs as `run` does. A swap calls both once the version it replaces
        is freed."""
        ...

    def inline_rows(self, budget_s: float, max_rows: int) -> int:
        """The most rows of a batch that may run on the event loop: those predicted to take at most budget_s."""
        ...

    def with_outputs(self, names: list[str]) -> Session:
        """The same graph and sessions (nothing loaded twice), asked for other outputs: onnxruntime computes and
        copies out only the outputs a run asks for."""
        ...

    def describe(self) -> str:
        """How batches run, for the start-up log."""
        ...

    def onnx_sessions(self) -> list[ort.InferenceSession]:
        """The onnxruntime sessions it holds: what freeing its version must release (models.Models._freed)."""
        ...


@dataclass
class Spinning:
    """A graph's spinning session, its intra-op threads and the rows from which a batch uses it: built after the
    CpuSession (add_heavy) and shared with its with_outputs views, which exist by then."""

    session: ort.InferenceSession | None = None
    rows: int = NEVER
    threads: int = 0  # 0 until add_heavy has measured them (--intra-op-threads 0)
    timings: dict[int, float] = field(default_factory=dict)  # threads -> seconds of a full batch, when measured
    reused: bool = False  # threads and timings measured for an earlier version of the architecture


class CpuSession:
    """Two sessions of one graph: the event loop's, on one thread, and the worker's, whose pool threads spin.

    A batch on the event loop holds the loop's core for its whole run, so its session runs on that core alone:
    more intra-op threads would be woken for every operator of batches that take microseconds. The worker's
    spinning session is for heavy batches, which the loop hands over to keep reading requests: waking sleeping
    threads for every operator costs a long graph dearly (a conv decoder's full batch runs markedly slower
    without spinning), and it has as many threads as pay at a full batch (`intra` 0: measured among 1 to the
    CPUs this process may use). Batches on the worker predicted to run shorter than SPIN_AFTER_S use the loop's
    session there: spinning during medium batches under concurrency costs more than it saves (BENCHMARKS.md has
    the measurements). The spinning session is built by add_heavy, apart from the first: each warmed session
    holds about half of what a version costs (its arena grown to a full batch), and a swap builds it only once
    the old version is freed (models.Models), the measuring of its threads included. One thread (given, or the
    fastest measured) has no pool threads to spin, and a graph whose full batch runs within SPIN_AFTER_S (on one
    thread, or on the spinning session once timed) has no batch to spin for: the worker then runs the loop's
    session, and no second one is kept.
    """

    provider = CPU

    def __init__(
        self, path: Path, input_name: str, output_names: list[str], intra: int, inter: int, measured: Measured
    ) -> None:
        self.path, self.inter = path, inter
        self.input_name, self.output_names = input_name, output_names
        self.session = ort.InferenceSession(str(path), _options(1, inter), providers=[CPU])
        self.spinning = Spinning(threads=intra)
        self.measured = measured
        self.cost = Cost(0.0, 0.0)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {self.input_name: x})

    def run_on_worker(self, x: np.ndarray) -> list[np.ndarray]:
        # add_heavy sets the rows after the session, so a batch that reads its rows finds the session built.
        spinning = self.spinning
        session = spinning.session if len(x) >= spinning.rows else self.session
        return session.run(self.output_names, {self.input_name: x})

    def warm_up(self, row_shape: tuple[int, ...], max_rows: int) -> None:
        """`cost` of the loop's session, each size run once untimed first so that the first requests pay no
        allocation or kernel set-up."""
        self.cost = _measure(self.run, row_shape, max_rows, self.measured, LOOP)

    def measure_heavy(self, row_shape: tuple[int, ...], max_rows: int) -> None:
        """The worker's threads, when neither given nor measured for the architecture, and the spinning
        session's Cost (timed with them, or alone for given threads): each candidate session built, timed and
        dropped."""
        spinning, measured = self.spinning, self.measured
        if self.cost.seconds(max_rows) < SPIN_AFTER_S:
            return  # a full batch on the loop's one thread already runs within SPIN_AFTER_S: no batch would spin
        if not spinning.threads:
            spinning.reused = measured.threads is not None
            if measured.threads is None:
                measured.threads = self._fastest(row_shape, max_rows)
            spinning.threads, spinning.timings = measured.threads
        if spinning.threads > 1 and spinning.threads not in measured.costs:
            _measure(self._runner(self._spinning(spinning.threads)), row_shape, max_rows, measured, spinning.threads)

    def add_heavy(self, row_shape: tuple[int, ...], max_rows: int) -> None:
        """The spinning session, warmed as warm_up warms the first, and the rows from which batches use it; none
        where measure_heavy found no batch to spin for."""
        cost = self.measured.costs.get(self.spinning.threads)
        if self.spinning.threads < 2 or cost is None:
            return  # one thread, or a full batch too short to spin for: the loop's session runs every batch
        rows = cost.rows_within(SPIN_AFTER_S, max_rows) + 1
        if rows > max_rows:
            return  # not even a full batch runs long enough on it to spin for
        session = self._spinning(self.spinning.threads)
        _measure(self._runner(session), row_shape, max_rows, self.measured, self.spinning.threads)  # warmed only
        self.spinning.session, self.spinning.rows = session, rows

    def _runner(self, session: ort.InferenceSession) -> Callable[[np.ndarray], list[np.ndarray]]:
        return lambda x: session.run(self.output_names, {self.input_name: x})

    def _spinning(self, threads: int) -> ort.InferenceSession:
        return ort.InferenceSession(str(self.path), _options(threads, self.inter, spinning=True), providers=[CPU])

    def _fastest(self, row_shape: tuple[int, ...], max_rows: int) -> tuple[int, dict[int, float]]:
        """The fewest threads whose full batch runs within THREADS_SLACK of the fastest count's, among 1, powers of
        two and the CPUs this process may use (threads that do not pay only take cores from the event loop), and
        each count's time. Each candidate's Cost is kept in `measured` (the chosen one's is the spinning session's);
        one candidate session is alive at a time."""
        cpus = max(1, int(available_cpus()))
        counts = sorted({1, cpus, *(2**i for i in range(1, cpus.bit_length()) if 2**i < cpus)})
        timings = {1: self.cost.seconds(max_rows)}  # the loop's session: one thread, timed alike at warm-up
        for threads in counts[1:]:
            cost = _measure(self._runner(self._spinning(threads)), row_shape, max_rows, self.measured, threads)
            timings[threads] = cost.seconds(max_rows)
        best = min(timings.values())
        return min(t for t, seconds in timings.items() if seconds <= best * (1 + THREADS_SLACK)), timings

    def inline_rows(self, budget_s: float, max_rows: int) -> int:
        return self.cost.rows_within(budget_s, max_rows)

    def with_outputs(self, names: list[str]) -> CpuSession:
        view = copy.copy(self)
        view.output_names = names
        return view

    def describe(self) -> str:
        spinning = self.spinning
        measured = ", ".join(f"{t}: {s * 1e3:.2f} ms" for t, s in spinning.timings.items())
        earlier = ", measured for an earlier version of this architecture" if spinning.reused else ""
        chosen = f" (a full batch with 1, 2, ... threads: {measured}{earlier})" if measured else ""
        if spinning.session is None:
            if spinning.threads == 1:
                why = "one thread has no pool threads to spin"
            else:
                on = f"{spinning.threads} threads" if spinning.threads else "one thread"
                why = f"a full batch on {on} runs within {SPIN_AFTER_S * 1e3:g} ms: no batch to spin for"
            return f"the worker runs the event loop's session, 1 intra-op thread{chosen} ({why})"
        return (f"worker session {spinning.threads} intra-op thread(s){chosen}, pool threads spin for batches "
                f"from {spinning.rows} rows")  # fmt: skip

    def onnx_sessions(self) -> list[ort.InferenceSession]:
        return [self.session] if self.spinning.session is None else [self.session, self.spinning.session]


class CudaSession:
    """One CUDA session for every batch, run with IO binding: the input is copied to the device once and the
    outputs stay there until the one copy back, instead of onnxruntime staging both through its own host
    buffers on every run."""

    provider = CUDA

    def __init__(
        self, session: ort.InferenceSession, input_name: str, output_names: list[str], measured: Measured
    ) -> None:
        self.session, self.input_name, self.output_names = session, input_name, output_names
        self.measured = measured
        self.cost = Cost(0.0, 0.0)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return run_bound(self.session, self.input_name, self.output_names, x, "cuda")

    run_on_worker = run

    def warm_up(self, row_shape: tuple[int, ...], max_rows: int) -> None:
        """`cost` of the IO-binding path, at one row and at a full batch (kernel selection and the arena's first
        growth happen in the untimed first runs)."""
        self.cost = _measure(self.run, row_shape, max_rows, self.measured, LOOP)

    def measure_heavy(self, row_shape: tuple[int, ...], max_rows: int) -> None:
        pass  # one session runs every batch

    add_heavy = measure_heavy

    def inline_rows(self, budget_s: float, max_rows: int) -> int:
        return 0  # a GPU run waits on the device, which must not stall the event loop

    def with_outputs(self, names: list[str]) -> CudaSession:
        view = copy.copy(self)
        view.output_names = names
        return view

    def describe(self) -> str:
        return "IO binding, every batch on the worker thread"

    def onnx_sessions(self) -> list[ort.InferenceSession]:
        return [self.session]


def run_bound(
    session: ort.InferenceSession, input_name: str, output_names: list[str], x: np.ndarray, device: str
) -> list[np.ndarray]:
    """One run with IO binding: the host input bound once, outputs allocated on `device`, copied back once."""
    binding = session.io_binding()
    binding.bind_cpu_input(input_name, x)
    for name in output_names:
        binding.bind_output(name, device)
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()


def open_session(
    path: Path,
    input_name: str,
    output_names: list[str],
    device: str = "auto",
    intra: int = 1,
    inter: int = 1,
    cuda_mem_limit_mb: int = 0,
    architecture: str | None = None,
) -> tuple[Session, str]:
    """The graph's session on `device` and, on CPU, why CUDA is not used (for the start-up log line).
    `architecture`: what this graph shares with the graphs of other versions built alike, whose timings it then
    reuses (`Measured`); None: nothing shared, everything timed."""
    check_device(device)
    why_not = "CPU requested"
    if device != "cpu":
        session, why_not = _try_cuda(path, _options(intra, inter), cuda_options(cuda_mem_limit_mb))
        if session is not None:
            return CudaSession(session, input_name, output_names, _measured(CUDA, architecture)), ""
        if device == "cuda":
            raise DeviceError(f"--device cuda: {why_not}")
    return CpuSession(path, input_name, output_names, intra, inter, _measured(CPU, architecture)), why_not


def _measured(provider: str, architecture: str | None) -> Measured:
    return Measured() if architecture is None else MEASURED.setdefault((provider, architecture), Measured())


def _options(intra_op_threads: int, inter_op_threads: int, spinning: bool = False) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3
    return options


def cuda_options(mem_limit_mb: int) -> dict[str, str]:
    """CUDA execution provider options. The arena grows by what is asked, not by doubling (the default), and at
    most to `mem_limit_mb` (0: no limit): a card is often shared, and a doubling arena can hold twice the
    memory a batch needs. TF32 is off: on Ampere and later it is onnxruntime's default and moved the MNIST MLP
    encoder's outputs by 1.3e-3 from the CPU's (BENCHMARKS.md, "GPU"), while these small graphs gain nothing
    measurable from it."""
    options = {"arena_extend_strategy": "kSameAsRequested", "use_tf32": "0"}
    if mem_limit_mb:
        options["gpu_mem_limit"] = str(mem_limit_mb << 20)
    return options


def preload_cuda() -> str:
    """Loads the CUDA and cuDNN libraries that pip installed (the nvidia-* wheels), where this onnxruntime can;
    without this a CUDA session fails to find them unless LD_LIBRARY_PATH names them. onnxruntime prints each
    library it could not load: those lines are kept and returned (the first one), so the reason lands in the
    start-up log's one line, not as a page of noise."""
    if not hasattr(ort, "preload_dlls"):
        return ""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        ort.preload_dlls()
    failed = [line for line in printed.getvalue().splitlines() if line.startswith("Failed to load")]
    return failed[0] if failed else ""


def _try_cuda(
    path: Path, options: ort.SessionOptions, provider_options: dict[str, str]
) -> tuple[ort.InferenceSession | None, str]:
    """A CUDA session, or None and why not."""
    if CUDA not in ort.get_available_providers():
        return None, f"this onnxruntime build has no {CUDA} (providers: {ort.get_available_providers()})"
    missing = preload_cuda()
    ort.set_default_logger_severity(4)  # the failed library load is reported by us, in one line
    try:
        session = ort.InferenceSession(str(path), options, providers=[(CUDA, provider_options), CPU])
    except Exception as exc:  # onnxruntime raises its own Fail/RuntimeException types for missing libraries
        return None, f"creating a CUDA session failed: {exc}"
    finally:
        ort.set_default_logger_severity(3)
    if session.get_providers()[0] != CUDA:  # onnxruntime falls back to CPU silently when CUDA cannot load
        detail = f" ({missing})" if missing else ""
        return None, f"the CUDA libraries (CUDA, cuDNN) or a GPU are not available to onnxruntime{detail}"
    return session, ""


def _measure(
    run: Callable[[np.ndarray], object], row_shape: tuple[int, ...], max_rows: int, measured: Measured, key: str | int
) -> Cost:
    """Warms `run` up and fits its Cost to the best of three runs at one row and at max_rows, unless `measured`
    already holds the Cost under `key` (then it is only warmed up)."""
    known = measured.costs.get(key)
    best = {}
    for rows in sorted({1, max_rows}):
        x = np.zeros((rows, *row_shape), dtype=np.float32)
        run(x)  # allocations and kernel set-up, not timed
        if known is None:
            best[rows] = min(_timed(run, x) for _ in range(3))
    if known is None:
        per_row = (best[max_rows] - best[1]) / (max_rows - 1) if max_rows > 1 else best[1]
        known = measured.costs[key] = Cost(best[1] - per_row, max(per_row, 0.0))
    return known


def _timed(fn: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start
