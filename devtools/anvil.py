"""A local anvil EVM node for the demo, the tests and CI: find it, start it, stop it, restart it.

``deploy/evm/install.sh`` installs the binary (an npm package that ships it prebuilt). With a state
file, anvil loads the chain from it at start and dumps it on SIGTERM, so :meth:`Anvil.stop` +
:meth:`Anvil.start` keep every block and transaction; :meth:`Anvil.kill` (SIGKILL) loses whatever
was not dumped (see ``state_interval_s``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = "deploy/evm/install.sh"

# Dev account 0 of anvil (and hardhat): derived from the PUBLIC test mnemonic
# "test test test test test test test test test test test junk". Everyone knows this key: use it only
# on a local throw-away node, never on a real chain.
ANVIL_DEV_KEY_0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ANVIL_DEV_ADDRESS_0 = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
ANVIL_DEFAULT_CHAIN_ID = 31337


class AnvilError(Exception):
    """anvil is missing, would not start, or would not stop: the message says why and where the log is."""


def _platform_package() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    system = {"linux": "linux", "darwin": "darwin"}.get(platform.system().lower(), platform.system().lower())
    return f"anvil-{system}-{arch}"


def find_anvil() -> Path:
    """The anvil binary: ``$ANVIL_BIN``, else the one ``deploy/evm/install.sh`` installs, else ``anvil`` on PATH."""
    env = os.environ.get("ANVIL_BIN")
    if env:
        p = Path(env)
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise AnvilError(f"ANVIL_BIN={env} is not an executable file")
        return p
    local = REPO_ROOT / "deploy/evm/node_modules/@foundry-rs" / _platform_package() / "bin/anvil"
    if local.is_file() and os.access(local, os.X_OK):
        return local
    on_path = shutil.which("anvil")
    if on_path:
        return Path(on_path)
    raise AnvilError(
        f"anvil not found: not at {local}, not on PATH and ANVIL_BIN is unset; run {INSTALL_SCRIPT} "
        "(it needs node and npm)"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return "(no log)"


class Anvil:
    """One anvil process on a fixed host and port, optionally with a state file.

    ``port=0`` picks a free port once; ``restart`` and a later ``start`` reuse it. ``block_time`` (seconds,
    a float > 0) switches from mining one block per transaction to interval mining. ``state_interval_s``
    (whole seconds) also dumps the state periodically, so a SIGKILL loses at most that much.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        state_path: Path | None = None,
        block_time: float | None = None,
        chain_id: int | None = None,
        state_interval_s: int | None = None,
        log_path: Path | None = None,
        binary: Path | None = None,
        start_timeout_s: float = 15.0,
        quiet: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        if block_time is not None and not block_time > 0:
            raise ValueError(f"block_time must be > 0 seconds, got {block_time}")
        if state_interval_s is not None and (state_path is None or state_interval_s < 1):
            raise ValueError("state_interval_s needs a state_path and is whole seconds >= 1")
        self.host = host
        self.port = port or free_port(host)
        self.state_path = state_path
        self.block_time = block_time
        self.chain_id = chain_id
        self.state_interval_s = state_interval_s
        if log_path is None:
            log_path = (
                state_path.with_name(state_path.name + ".log")
                if state_path is not None
                else Path(tempfile.gettempdir()) / f"anvil-{self.port}.log"
            )
        self.log_path = log_path
        self.binary = binary
        self.start_timeout_s = start_timeout_s
        self.quiet = quiet
        self.extra_args = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None

    # -- properties -----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def argv(self) -> list[str]:
        argv = [str(self.binary or find_anvil()), "--host", self.host, "--port", str(self.port)]
        if self.state_path is not None:
            argv += ["--state", str(self.state_path)]
        if self.state_interval_s is not None:
            argv += ["--state-interval", str(self.state_interval_s)]
        if self.block_time is not None:
            argv += ["--block-time", repr(float(self.block_time))]
        if self.chain_id is not None:
            argv += ["--chain-id", str(self.chain_id)]
        if self.quiet:
            argv.append("--quiet")
        return argv + self.extra_args

    # -- life cycle -----------------------------------------------------------------------------------
    def start(self) -> Anvil:
        """Start anvil and wait until it answers ``eth_chainId``. A no-op when already running."""
        if self.running:
            return self
        argv = self.argv()
        if _port_open(self.host, self.port):
            raise AnvilError(f"port {self.host}:{self.port} is taken by another process; choose another")
        if self.state_path is not None:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + self.start_timeout_s
        last: Exception | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise AnvilError(
                    f"anvil exited with code {code} at start on {self.url}; log {self.log_path}:\n"
                    f"{_tail(self.log_path)}"
                )
            try:
                got = int(self.rpc("eth_chainId", timeout_s=1.0), 16)
            except (OSError, ValueError, AnvilError) as exc:
                last = exc
            else:
                if self.chain_id is not None and got != self.chain_id:
                    self.kill()
                    raise AnvilError(f"anvil on {self.url} reports chain id {got}, asked for {self.chain_id}")
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise AnvilError(
                    f"anvil did not answer eth_chainId on {self.url} within {self.start_timeout_s:g}s "
                    f"(last error: {last!r}); log {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.02)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, sig)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (anvil dumps ``--state`` then exits) and wait; SIGKILL and AnvilError if it hangs."""
        proc = self._proc
        if proc is None:
            return
        self._signal(signal.SIGCONT)  # a paused node cannot handle SIGTERM
        self._signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired as exc:
            self.kill()
            raise AnvilError(
                f"anvil pid {proc.pid} did not exit within {timeout_s:g}s of SIGTERM; killed, state may be "
                f"lost; log {self.log_path}"
            ) from exc
        self._proc = None

    def kill(self) -> None:
        """SIGKILL: no state dump, like a crash of the node's host."""
        proc = self._proc
        if proc is None:
            return
        self._signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        self._proc = None

    def restart(self) -> Anvil:
        """stop() then start() on the same port and state file."""
        self.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung node)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.kill()

    # -- JSON-RPC -------------------------------------------------------------------------------------
    def rpc(self, method: str, params: list[Any] | None = None, *, timeout_s: float = 5.0) -> Any:
        """One JSON-RPC call (e.g. ``anvil_mine``); AnvilError on an error answer."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
        req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            answer = json.loads(resp.read())
        if "error" in answer:
            raise AnvilError(f"{method} on {self.url}: {answer['error']}")
        return answer.get("result")

    def mine(self, blocks: int = 1) -> None:
        """Mine ``blocks`` empty blocks now (``anvil_mine``)."""
        self.rpc("anvil_mine", [hex(blocks)])
