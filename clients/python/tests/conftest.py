"""Starts the drs demo server for the tests: DRS_DEMO_SERVER names its
binary (cargo test -p examples --test clients sets it, with DRS_TLS_CA,
DRS_TLS_CERT and DRS_TLS_KEY for the TLS tests)."""

import os
import queue
import shutil
import subprocess
import tempfile
import threading

import pytest

DEMO = os.environ.get("DRS_DEMO_SERVER")
LIMIT = 30.0


class Demo:
    """A demo_server process; `addr(kind)` is where its listener of that
    kind listens."""

    def __init__(self, args):
        self.args = list(args)
        self.store = None
        if "--store" not in self.args:
            # The broker's store, removed after the test.
            self.store = tempfile.mkdtemp(prefix="drs-py-store-")
            self.args += ["--store", self.store]
        self.proc = None
        self.listening = []
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [DEMO, *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        lines = queue.Queue()

        def read():
            for line in self.proc.stdout:
                lines.put(line.decode().strip())

        threading.Thread(target=read, daemon=True).start()
        wanted = sum(1 for a in self.args if a in ("--tcp", "--ws", "--ipc"))
        self.listening = []
        while len(self.listening) < wanted:
            try:
                line = lines.get(timeout=LIMIT)
            except queue.Empty:
                raise AssertionError("demo_server did not announce its listeners")
            if line.startswith("listening "):
                # listening KIND://ADDR[?protocol=…]
                kind, addr = line[len("listening "):].split("://", 1)
                self.listening.append((kind, addr.split("?", 1)[0]))

    def addr(self, kind, n=0):
        return [a for k, a in self.listening if k == kind][n]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(LIMIT)

    def pin(self):
        """Makes the next start() listen where this one did (not port 0)."""
        args, bound = [], iter(self.listening)
        it = iter(self.args)
        for a in it:
            args.append(a)
            if a in ("--tcp", "--ws", "--ipc"):
                next(it)
                args.append(next(bound)[1])
        self.args = args

    def restart(self):
        """Kills the server and starts it again on the same addresses."""
        self.pin()
        self.stop()
        self.start()


@pytest.fixture
def demo():
    """Starts demo_servers with the given arguments; stops them after."""
    if not DEMO:
        pytest.skip("DRS_DEMO_SERVER is not set: run through `cargo test -p examples --test clients`")
    started = []

    def start(*args):
        d = Demo(args)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()
        if d.store:
            shutil.rmtree(d.store, ignore_errors=True)


@pytest.fixture
def tls():
    """(ca, cert, key) PEM files for localhost, made by the Rust harness."""
    paths = [os.environ.get(v) for v in ("DRS_TLS_CA", "DRS_TLS_CERT", "DRS_TLS_KEY")]
    if not all(paths):
        pytest.skip("DRS_TLS_CA/CERT/KEY are not set: run through cargo test")
    return paths
