"""The scheduler's side of the drafter channel: start or reach a drafter, send rounds, collect.

`DrafterClient` is one connection (ZeroMQ REQ, typed messages from minedraft.core.messages): at
most one round is out at a time. `DrafterSupervisor` owns the drafter's life: it starts (or, with
an operator's `draft_address`, reaches) a drafter, checks its vocabulary, and after a crash, hang
or error reply restarts (or reconnects to) it with exponential backoff, for as long as it takes,
without ever blocking a step. vLLM-free: tested on its own.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from minedraft.core import messages as m
from minedraft.core.errors import MineDraftError

logger = logging.getLogger("minedraft.drafter.client")

TAIL_LINES = 20  # lines of a crashed drafter's output quoted in the error


class DrafterDown(MineDraftError, RuntimeError):
    """The drafter crashed, hung past the timeout, or answered with an error."""


def free_tcp_address(host: str = "127.0.0.1") -> str:
    """A tcp:// address on `host` with a port that is free now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return f"tcp://{host}:{s.getsockname()[1]}"


class OutputTail:
    """Reads a child's output in a thread: keeps its last lines (for error messages) and copies
    everything to `log_path` when given."""

    def __init__(self, stream, log_path: str | None = None, lines: int = TAIL_LINES):
        self.lines: collections.deque[str] = collections.deque(maxlen=lines)
        self._log = open(log_path, "ab") if log_path else None
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            self.lines.append(raw.decode(errors="replace").rstrip())
            if self._log is not None:
                self._log.write(raw)
                self._log.flush()
        stream.close()
        if self._log is not None:
            self._log.close()

    def text(self, wait_s: float = 1.0) -> str:
        """The last lines (waiting up to `wait_s` for a dead child's output to drain)."""
        self._thread.join(wait_s)
        return "\n".join(self.lines)


@dataclass
class DrafterProcess:
    """A drafter we started: its process and the tail of its output."""
    popen: subprocess.Popen
    tail: OutputTail

    def exit_message(self) -> str:
        """'exited with code N' and the process's last lines of output."""
        lines = self.tail.text()
        return (f"drafter process exited with code {self.popen.returncode}"
                + (f"; its last output:\n{lines}" if lines else ""))


def drafter_command(model: str, address: str, *, cores: str = "all", dtype: str = "bfloat16",
                    max_model_len: int = 2048, backend: str = "lean",
                    enforce_eager: bool = False, quantization: str | None = None) -> list[str]:
    """The command line that starts a drafter listening on `address`."""
    cmd = [sys.executable, "-m", "minedraft.drafter", "--model", model, "--bind", address,
           "--cores", cores, "--dtype", dtype, "--max-model-len", str(max_model_len),
           "--backend", backend, "--parent-pid", str(os.getpid())]
    if quantization:
        cmd += ["--quantization", quantization]
    return cmd + (["--enforce-eager"] if enforce_eager else [])


def spawn_drafter(cmd: list[str], log_path: str | None = None,
                  gpu: str | None = None) -> DrafterProcess:
    """Start the drafter in its own session (so its vLLM processes can be killed with it), on GPU
    index `gpu` when given. Its output is kept (last lines) and copied to `log_path`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_CPU_OMP")}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    logger.info("starting drafter: %s", " ".join(cmd))
    popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
    return DrafterProcess(popen, OutputTail(popen.stdout, log_path))


def kill_process_group(process: subprocess.Popen) -> None:
    """SIGKILL the drafter and the processes it started (its own session), and reap it. A
    drafter holds nothing worth saving, and a hung one would not answer anything gentler."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        logger.error("drafter process %d did not die after SIGKILL", process.pid)


_CONTEXT = None


def _zmq_context():
    """One ZeroMQ context for drafter channels, whose I/O thread may run on any core.

    ZeroMQ moves bytes in a thread of its own, which inherits the affinity of the thread that
    creates it. In vLLM's engine core that is the target's core, busy with the forward pass
    that starts right after a round is sent: the round then waits for a time slice (~10 ms
    measured). Allowed on every core, the I/O thread runs where the (idle) drafter is."""
    global _CONTEXT
    if _CONTEXT is None:
        import zmq
        _CONTEXT = zmq.Context(io_threads=1)
        for core in range(os.cpu_count() or 1):
            _CONTEXT.set(zmq.THREAD_AFFINITY_CPU_ADD, core)
    return _CONTEXT


class DrafterClient:
    """One connection to a drafter (REQ socket; one message out at a time)."""

    def __init__(self, address: str, process: DrafterProcess | None = None,
                 timeout_s: float = 30.0):
        import zmq
        self.address = address
        self.process = process  # None when the operator runs the drafter elsewhere
        self.timeout_s = timeout_s
        self.in_flight = False
        self.replies = 0  # valid replies received, the hello's included
        self._sock = _zmq_context().socket(zmq.REQ)
        self._sock.connect(address)

    def _check_alive(self) -> None:
        if self.process is not None and self.process.popen.poll() is not None:
            raise DrafterDown(self.process.exit_message())

    def send(self, msg: m.Hello | m.Draft | m.Stop) -> None:
        """Send one request; raises DrafterDown if the drafter process is gone."""
        assert not self.in_flight, "one drafter round at a time"
        self._check_alive()
        self._sock.send(m.encode(msg))
        self.in_flight = True

    def ready(self) -> bool:
        """A reply is waiting (non-blocking)."""
        import zmq
        return self.in_flight and bool(self._sock.poll(0, zmq.POLLIN))

    def busy(self) -> bool:
        """A reply is still awaited from a drafter that is alive (non-blocking): receiving now
        would block."""
        return (self.in_flight and not self.ready()
                and (self.process is None or self.process.popen.poll() is None))

    def receive(self, timeout_s: float | None = None) -> m.HelloReply | m.DraftReply | m.StopReply:
        """The reply to the message in flight. Raises DrafterDown when the process dies, no
        reply comes within the timeout, or the reply is an error or malformed."""
        import msgspec
        import zmq
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            if self._sock.poll(50, zmq.POLLIN):
                data = self._sock.recv()
                self.in_flight = False
                try:
                    reply = m.decode_reply(data)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise DrafterDown(f"malformed reply from the drafter: {exc}") from exc
                if isinstance(reply, m.ErrorReply):
                    raise DrafterDown(f"drafter error: {reply.error}")
                self.replies += 1
                return reply
            self._check_alive()
            if time.monotonic() > deadline:
                raise DrafterDown(f"drafter did not answer within {timeout_s:.0f} s")

    def close(self) -> None:
        """End the drafter's processes if we started it (an operator's drafter is left
        running), and the socket."""
        if self.process is not None:
            kill_process_group(self.process.popen)
        self._sock.close(linger=0)


@dataclass
class DrafterOptions:
    """How the supervisor reaches a drafter: `command` to start one (with `log_path`, `gpu`), or
    `address` of one the operator runs."""
    command: list[str] | None = None  # with "{address}" where the bind address goes
    address: str | None = None
    log_path: str | None = None
    gpu: str | None = None
    timeout_s: float = 30.0  # a round slower than this: the drafter is hung
    start_timeout_s: float = 600.0
    restart: bool = True
    backoff_s: tuple[float, float] = (1.0, 60.0)  # first and longest wait between attempts


class DrafterSupervisor:
    """The drafter's life: start or reach it, say hello, notice failures, come back.

    `poll()` is called at every step and never blocks: it advances a start in progress (hello
    sent, reply awaited) and starts the next attempt when its backoff has passed. `client` is
    set while a drafter answers. `generation` grows each time a (new) drafter becomes ready, so
    the caller knows to forget what the previous one held."""

    def __init__(self, options: DrafterOptions, target_vocab: str | None):
        self.opt = options
        self.target_vocab = target_vocab
        self.client: DrafterClient | None = None
        self.restarts = 0  # attempts after a failure (starts or reconnects)
        self.failures = 0  # failures in a row (0 while a drafter answers)
        self._streak = 0  # failures since a drafter last answered a round (sets the backoff)
        self.generation = 0
        self.instance: str | None = None
        self.last_error: str | None = None
        self._pending: DrafterClient | None = None
        self._pending_since = 0.0
        self._next_attempt = 0.0

    @property
    def up(self) -> bool:
        """A drafter answers now."""
        return self.client is not None

    @property
    def retry_in_s(self) -> float:
        """Seconds until the next attempt while down (0 when up or starting)."""
        if self.client is not None or self._pending is not None:
            return 0.0
        return max(0.0, self._next_attempt - time.monotonic())

    def start(self, wait: bool = True) -> None:
        """First start. With `wait`, blocks until the drafter answers or `start_timeout_s`
        passes; raises DrafterDown (or a vocabulary mismatch) then."""
        self._attempt()
        if wait:
            try:
                reply = self._pending.receive(timeout_s=self.opt.start_timeout_s)
            except DrafterDown:
                self._pending.close()
                self._pending = None
                raise
            self._finish(reply, fatal=True)

    def _attempt(self) -> None:
        opt = self.opt
        if opt.address is not None:
            address, process = opt.address, None
        else:
            address = free_tcp_address()
            cmd = [a.replace("{address}", address) for a in opt.command]
            process = spawn_drafter(cmd, opt.log_path, opt.gpu)
        self._pending = DrafterClient(address, process, timeout_s=opt.timeout_s)
        self._pending_since = time.monotonic()
        self._pending.send(m.Hello())

    def _finish(self, hello, fatal: bool = False) -> None:
        client, self._pending = self._pending, None
        msg = None
        if not isinstance(hello, m.HelloReply):
            msg = f"the drafter answered hello with {type(hello).__name__}"
        elif self.target_vocab is not None and hello.vocab != self.target_vocab:
            msg = ("the drafter's vocabulary differs from the target's; PSD needs a drafter "
                   "with the target's tokenizer")
        if msg is not None:
            client.close()
            if fatal:
                raise DrafterDown(msg)
            self._failed(msg)
            return
        self.client = client
        self.instance = hello.instance
        self.failures = 0
        self.generation += 1
        logger.warning("PSD drafter ready at %s (pid %s, %s backend)", client.address, hello.pid,
                       hello.backend)

    def poll(self) -> None:
        """Advance a start in progress, or begin the next attempt when its time has come."""
        if self.client is not None:
            return
        if self._pending is not None:
            try:
                if self._pending.ready():
                    reply = self._pending.receive(timeout_s=0)
                    self._finish(reply)
                elif time.monotonic() - self._pending_since > self.opt.start_timeout_s:
                    raise DrafterDown(f"no answer within {self.opt.start_timeout_s:.0f} s")
                else:
                    self._pending._check_alive()
            except DrafterDown as exc:
                pending, self._pending = self._pending, None
                pending.close()
                self._failed(f"the PSD drafter did not start: {exc}")
            return
        if self.opt.restart and time.monotonic() >= self._next_attempt:
            self.restarts += 1
            what = "reconnecting to" if self.opt.address else "restarting"
            logger.warning("%s the PSD drafter (attempt %d)", what, self.restarts)
            try:
                self._attempt()
            except (DrafterDown, OSError) as exc:
                self._pending = None
                self._failed(f"drafter attempt failed: {exc}")

    def failed(self, exc: Exception) -> None:
        """The drafter in use failed: drop it (killing a process we started) and schedule the
        next attempt. The backoff starts afresh only if it had answered a round: one that
        answers hello and dies at its first round (a crash on this machine's CPU, a bad
        checkpoint) would otherwise restart every second for good."""
        if self.client is not None:
            if self.client.replies > 1:
                self._streak = 0
            self.client.close()
            self.client = None
        self._failed(f"PSD drafter failed ({exc}); serving without speculation")

    def _failed(self, message: str) -> None:
        self.last_error = message
        self.failures += 1
        self._streak += 1
        first, longest = self.opt.backoff_s
        wait = min(longest, first * 2 ** (self._streak - 1))
        self._next_attempt = time.monotonic() + wait
        logger.error("%s%s", message, f"; next attempt in {wait:.0f} s" if self.opt.restart
                     else "; not restarting (restart_drafter is off)")

    def close(self) -> None:
        """Shut down: kill a drafter we started (it holds nothing worth saving), or just leave
        the operator's drafter."""
        for client in (self._pending, self.client):
            if client is not None:
                client.close()
        self._pending = self.client = None
