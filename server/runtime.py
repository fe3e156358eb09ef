"""onnxruntime sessions for the two graphs: provider choice (CUDA with IO binding, else CPU), threads, warm-up.

CUDA is used only when a session really gets it: onnxruntime-gpu lists CUDAExecutionProvider even where the
CUDA libraries are missing and then silently falls back to CPU, so the provider a session ended up with is
what counts. `auto` falls back to CPU with one log line; `cuda` refuses to start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vaeserve.errors import VaeserveError

SPIN_AFTER_S = 5e-3  # batches at least this long run on the spinning session (see GraphSession)
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")


class DeviceError(VaeserveError):
    pass


def _options(intra_op_threads: int, inter_op_threads: int, spinning: bool = False) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3
    return options


def _try_cuda(path: Path, options: ort.SessionOptions) -> tuple[ort.InferenceSession | None, str]:
    """A CUDA session, or None and why not."""
    if CUDA not in ort.get_available_providers():
        return None, f"this onnxruntime build has no {CUDA} (providers: {ort.get_available_providers()})"
    ort.set_default_logger_severity(4)  # the failed library load is reported by us, in one line
    try:
        session = ort.InferenceSession(str(path), options, providers=[CUDA, CPU])
    except Exception as exc:  # onnxruntime raises its own Fail/RuntimeException types for missing libraries
        return None, f"creating a CUDA session failed: {exc}"
    finally:
        ort.set_default_logger_severity(3)
    if session.get_providers()[0] != CUDA:
        return None, "the CUDA libraries (CUDA, cuDNN) or a GPU are not available to onnxruntime"
    return session, ""


class GraphSession:
    """One ONNX graph (dynamic batch axis): `run(x)` -> its outputs, in order, for batches run on the event
    loop, and `run_on_worker(x)` for the heavy ones the batcher hands to its worker thread.

    On CPU the graph has two sessions that differ in one setting, whether idle pool threads spin. The event
    loop's never spins: a spinning thread takes the core the loop needs (measured slower with 2 spinning
    threads on 2 cores). Waking sleeping threads for every operator costs a long graph dearly, though: a conv
    decoder's 1024-row run was a third slower than with spinning (Sample(1024) 62 -> 80 calls/s). Spinning
    during medium batches under concurrency cost more than it saved (conv Encode(32) at 32 clients fell by
    40%), so only batches predicted to run for SPIN_AFTER_S or longer use the spinning session. On CUDA one
    session does both.

    Predictions come from warm-up, where each session is timed alone at one row and at a full batch (`Cost`):
    a run timed inside a busy server also holds the wait for the GIL after onnxruntime returns, which grows
    with the load, not with the batch (measured: a 0.2 us/row decoder timed at 3.6-4.4 us/row in service).
    """

    def __init__(
        self,
        path: Path,
        input_name: str,
        output_names: list[str],
        device: str = "auto",
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
    ) -> None:
        if device not in DEVICES:
            raise DeviceError(f"--device: expected one of {', '.join(DEVICES)}, got {device!r}")
        self.path = path
        self.input_name = input_name
        self.output_names = output_names
        options = _options(intra_op_threads, inter_op_threads)
        session, why_not = _try_cuda(path, options) if device in ("auto", "cuda") else (None, "CPU requested")
        if session is None:
            if device == "cuda":
                raise DeviceError(f"--device cuda: {why_not}")
            session = ort.InferenceSession(str(path), options, providers=[CPU])
        self.cpu_reason = why_not  # why CUDA is not used, for the start-up log line; "" when it is
        self.session = session
        self.provider = session.get_providers()[0]
        self.device_type = "cuda" if self.provider == CUDA else "cpu"  # where IO binding puts the outputs
        if self.provider == CUDA:
            self.run = self.run_on_worker = self._run_bound
        else:
            spinning = _options(intra_op_threads, inter_op_threads, spinning=True)
            self.worker_session = ort.InferenceSession(str(path), spinning, providers=[CPU])
            self.spin_rows = 1 << 62  # rows from which a batch spins: set by warm_up from a measured run
            self.run = self._run_plain
            self.run_on_worker = self._run_worker
        self.cost = Cost(0.0, 0.0)  # of the event loop's session: set by warm_up

    def _run_plain(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {self.input_name: x})

    def _run_worker(self, x: np.ndarray) -> list[np.ndarray]:
        session = self.worker_session if len(x) >= self.spin_rows else self.session
        return session.run(self.output_names, {self.input_name: x})

    def _run_bound(self, x: np.ndarray) -> list[np.ndarray]:
        # IO binding: the input is copied to the device once and outputs stay there until the one copy back,
        # instead of onnxruntime staging both through its own host buffers on every run.
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, x)
        for name in self.output_names:
            binding.bind_output(name, self.device_type)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def warm_up(self, row_shape: tuple[int, ...], max_rows: int) -> None:
        """Times each session alone at one row and at a full batch, each size run once untimed first so that the
        first requests pay no allocation or kernel set-up: `cost` and, on CPU, the rows from which batches spin.
        On CUDA the IO-binding path the batches take is run as well."""
        self.cost = _measure(self.session, self.input_name, self.output_names, row_shape, max_rows)
        if self.provider == CUDA:
            for rows in sorted({1, max_rows}):
                self.run(np.zeros((rows, *row_shape), dtype=np.float32))
        else:
            spinning = _measure(self.worker_session, self.input_name, self.output_names, row_shape, max_rows)
            self.spin_rows = spinning.rows_within(SPIN_AFTER_S, max_rows) + 1


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


def _measure(
    session: ort.InferenceSession, input_name: str, output_names: list[str], row_shape: tuple[int, ...], max_rows: int
) -> Cost:
    """Warms `session` up and fits its Cost to the best of three runs at one row and at max_rows."""
    best = {}
    for rows in sorted({1, max_rows}):
        feed = {input_name: np.zeros((rows, *row_shape), dtype=np.float32)}
        session.run(output_names, feed)  # allocations and kernel set-up, not timed
        best[rows] = min(_timed(session.run, output_names, feed) for _ in range(3))
    per_row = (best[max_rows] - best[1]) / (max_rows - 1) if max_rows > 1 else best[1]
    return Cost(best[1] - per_row, max(per_row, 0.0))


def _timed(fn: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start
