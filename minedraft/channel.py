"""The scheduler's side of the drafter channel: start or reach a drafter, send rounds, collect.

ZeroMQ REQ socket, msgpack messages (see minedraft.drafter for the protocol). At most one round is
out at a time. A drafter that dies or stops answering is reported as `DrafterDown`; the caller
keeps serving without drafts and may `restart()`.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time

logger = logging.getLogger("minedraft.channel")


class DrafterDown(RuntimeError):
    """The drafter crashed, hung past the timeout, or answered with an error."""


def free_tcp_address(host: str = "127.0.0.1") -> str:
    with socket.socket() as s:
        s.bind((host, 0))
        return f"tcp://{host}:{s.getsockname()[1]}"


def spawn_drafter(model: str, cores: str, address: str, dtype: str, max_model_len: int,
                  enforce_eager: bool, log_path: str | None = None,
                  gpu: str | None = None) -> subprocess.Popen:
    """Start `python -m minedraft.drafter` as a child process bound to `address` (on GPU index
    `gpu` when given)."""
    cmd = [sys.executable, "-m", "minedraft.drafter", "--model", model, "--bind", address,
           "--cores", cores, "--dtype", dtype, "--max-model-len", str(max_model_len)]
    if enforce_eager:
        cmd.append("--enforce-eager")
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_CPU_OMP")}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    logger.warning("starting drafter: %s", " ".join(cmd))
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


class DrafterClient:
    def __init__(self, address: str, process: subprocess.Popen | None = None,
                 timeout_s: float = 30.0):
        self.address = address
        self.process = process  # None when the operator runs the drafter elsewhere
        self.timeout_s = timeout_s
        self.in_flight = False
        self._sock = None
        self._connect()

    def _connect(self) -> None:
        import zmq
        if self._sock is not None:
            self._sock.close(linger=0)
        self._sock = zmq.Context.instance().socket(zmq.REQ)
        self._sock.connect(self.address)
        self.in_flight = False

    def _alive(self) -> bool:
        return self.process is None or self.process.poll() is None

    # ----------------------------------------------------------------- rounds
    def send(self, msg: dict) -> None:
        import msgspec
        assert not self.in_flight, "one drafter round at a time"
        if not self._alive():
            raise DrafterDown(f"drafter process exited with code {self.process.returncode}")
        self._sock.send(msgspec.msgpack.encode(msg))
        self.in_flight = True

    def receive(self, timeout_s: float | None = None) -> dict:
        """Wait for the reply of the round in flight (checking the process stays alive)."""
        import msgspec
        import zmq
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while True:
            if self._sock.poll(50, zmq.POLLIN):
                reply = msgspec.msgpack.decode(self._sock.recv())
                self.in_flight = False
                if not reply.get("ok"):
                    raise DrafterDown(f"drafter error: {reply.get('error')}")
                return reply
            if not self._alive():
                raise DrafterDown(f"drafter process exited with code {self.process.returncode}")
            if time.monotonic() > deadline:
                raise DrafterDown(f"drafter did not answer within {timeout_s or self.timeout_s:.0f} s")

    def ready(self) -> bool:
        """A reply is waiting (non-blocking)."""
        import zmq
        return bool(self._sock.poll(0, zmq.POLLIN))

    def call(self, msg: dict, timeout_s: float | None = None) -> dict:
        self.send(msg)
        return self.receive(timeout_s)

    # ----------------------------------------------------------------- lifecycle
    def reset(self) -> None:
        """Drop a round in flight (a REQ socket cannot otherwise send again)."""
        self._connect()

    def stop(self, polite: bool = True) -> None:
        """Ask the drafter to stop (`polite`), then end its processes; a failed or hung drafter
        is killed at once."""
        try:
            if self.in_flight:
                self.reset()
            if polite and self._alive():
                self.call({"op": "stop"}, timeout_s=5)
        except DrafterDown:
            pass
        finally:
            if self.process is not None:
                kill_process_group(self.process, polite=polite)
            self._sock.close(linger=0)


def kill_process_group(process: subprocess.Popen, polite: bool = True) -> None:
    """The drafter and the vLLM processes it started (its own session, see spawn_drafter)."""
    import signal
    steps = ((signal.SIGTERM, 10), (signal.SIGKILL, 5)) if polite else ((signal.SIGKILL, 5),)
    for sig, wait in steps:
        try:
            os.killpg(process.pid, sig)
            if sig == signal.SIGTERM:
                os.killpg(process.pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only when resumed
        except (ProcessLookupError, PermissionError):
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
