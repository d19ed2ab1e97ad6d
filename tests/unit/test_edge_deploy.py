"""Edge deployment: the systemd unit (hardening, restart policy), can0.network and install-pi.sh.

Nothing here needs root or a running systemd: the unit is parsed, install-pi.sh runs with
--dry-run behind shims that record any command that would change the machine, and the
MemoryDenyWriteExecute= claim is checked by running the agent's imports and an Ed25519
signature under the same seccomp filter systemd installs for it.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.config import load_toml
from edge_agent.cli import build_parser
from edge_agent.config import AgentConfig

ROOT = Path(__file__).resolve().parents[2]
EDGE = ROOT / "deploy" / "edge"
UNIT = EDGE / "edge-agent.service"
INSTALL = EDGE / "install-pi.sh"
CAN0 = EDGE / "can0.network"
EXAMPLE_CONFIG = ROOT / "deploy" / "config" / "edge-agent.example.toml"

# The agent's stop path (edge_agent/cli.py, cmd_run): drain the spool for up to 30 s, then
# disconnect for up to 5 s. TimeoutStopSec= must leave it that long before SIGKILL.
AGENT_STOP_S = 35.0

# Commands install-pi.sh may use to change the machine. In a dry run, each is a shim that
# records the call and fails.
MUTATING = (
    "apt",
    "apt-get",
    "adduser",
    "useradd",
    "groupadd",
    "usermod",
    "python3",
    "pip",
    "pip3",
    "install",
    "mkdir",
    "cp",
    "mv",
    "rm",
    "ln",
    "chown",
    "chmod",
    "tee",
    "mktemp",
    "systemctl",
    "modprobe",
    "env",
)


# --- a small systemd unit file parser -----------------------------------------------------------


@dataclass(frozen=True)
class UnitFile:
    """Sections of (key, value) assignments, in file order; keys may repeat, as in systemd."""

    sections: dict[str, list[tuple[str, str]]]

    def values(self, section: str, key: str) -> list[str]:
        return [v for k, v in self.sections.get(section, []) if k == key]

    def one(self, section: str, key: str) -> str:
        vals = self.values(section, key)
        assert len(vals) == 1, f"[{section}] {key}= is assigned {len(vals)} times: {vals}"
        return vals[0]

    def has(self, section: str, key: str) -> bool:
        return bool(self.values(section, key))


def parse_unit(text: str) -> UnitFile:
    """systemd.syntax(7): [Section] headers, Key=Value lines, # and ; comments, and a trailing
    backslash joining the next line (comment lines inside a continuation are skipped)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: str | None = None
    pending: str | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith(("#", ";")) or (not line and pending is None):
            continue
        if pending is not None:
            line = f"{pending} {line}".strip()
            pending = None
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        key, sep, value = line.partition("=")
        if not sep or current is None:
            raise ValueError(f"line {lineno}: not a Key=Value line inside a section: {raw!r}")
        sections[current].append((key.strip(), value.strip()))
    if pending is not None:
        raise ValueError("the file ends inside a line continuation")
    return UnitFile(sections)


_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}


def timespan_s(value: str) -> float:
    """A systemd time span ("15", "45s", "2min", "100ms", "1min 30s") in seconds."""
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(num) * _TIME_UNITS[unit or "s"]
    return total


@pytest.fixture(scope="module")
def unit() -> UnitFile:
    return parse_unit(UNIT.read_text())


def test_parser_keeps_repeated_keys_and_joins_continuations() -> None:
    u = parse_unit(
        textwrap.dedent(
            """\
            # comment
            [Service]
            DeviceAllow=char-ttyACM rw
            ; another comment
            DeviceAllow=/dev/ttyS0 rw
            CapabilityBoundingSet=
            ExecStart=/bin/echo a \\
              b
            """
        )
    )
    assert u.values("Service", "DeviceAllow") == ["char-ttyACM rw", "/dev/ttyS0 rw"]
    assert u.one("Service", "CapabilityBoundingSet") == ""
    assert u.one("Service", "ExecStart") == "/bin/echo a b"
    with pytest.raises(ValueError, match="line 1"):
        parse_unit("Key=outside a section\n")
    assert timespan_s("1min 30s") == 90 and timespan_s("100ms") == 0.1 and timespan_s("15") == 15


# --- install-pi.sh, run behind shims ------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    rc: int
    out: str
    err: str
    calls: list[str]  # mutating commands the script tried to execute


def run_install(tmp: Path, *args: str, script: Path = INSTALL) -> Run:
    shims = tmp / "shims"
    shims.mkdir(exist_ok=True)
    log = tmp / "calls.log"
    for name in MUTATING:
        shim = shims / name
        shim.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexit 97\n')
        shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"}
    p = subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return Run(p.returncode, p.stdout, p.stderr, calls)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    r = run_install(tmp_path_factory.mktemp("dry"), "--dry-run", "--can0", str(ROOT))
    assert r.rc == 0, r.err
    return r


def commands(r: Run) -> list[list[str]]:
    """The commands a dry run prints ("+ cmd args..."), split as the shell would."""
    return [shlex.split(line[2:]) for line in r.out.splitlines() if line.startswith("+ ")]


def test_install_script_is_valid_bash() -> None:
    p = subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr
    assert "\nset -euo pipefail\n" in INSTALL.read_text()
    assert INSTALL.stat().st_mode & stat.S_IXUSR, "install-pi.sh should be executable"


def test_dry_run_prints_the_steps_and_executes_nothing(dry_run: Run) -> None:
    assert dry_run.calls == [], f"a dry run executed: {dry_run.calls}"
    cmds = commands(dry_run)
    # The system user: created with no home and no login shell, or already there.
    useradd = [c for c in cmds if c[0] == "useradd"]
    if useradd:
        (c,) = useradd
        assert c[-1] == "edge-agent"
        assert "--system" in c and "--no-create-home" in c
        assert c[c.index("--shell") + 1] == "/usr/sbin/nologin"
    else:
        assert "# user edge-agent exists" in dry_run.out
    # The venv, the project with the edge extra, the unit, a daemon-reload.
    assert ["python3", "-m", "venv", "/opt/edge-agent/venv"] in cmds or (
        "# virtual environment /opt/edge-agent/venv exists" in dry_run.out
    )
    pip = [c for c in cmds if c[:3] == ["/opt/edge-agent/venv/bin/python", "-m", "pip"]]
    assert len(pip) == 1 and pip[0][-1] == f"{ROOT}[edge]", pip
    assert [
        "install",
        "-m",
        "0644",
        "-o",
        "root",
        "-g",
        "root",
        str(UNIT),
        "/etc/systemd/system/edge-agent.service",
    ] in cmds
    assert ["systemctl", "daemon-reload"] in cmds
    assert (
        "+ write /etc/edge-agent/edge-agent.example.toml (mode 0640, owner root:edge-agent):" in dry_run.out
    )
    # --can0: the network file and networkd.
    assert [
        "install",
        "-m",
        "0644",
        "-o",
        "root",
        "-g",
        "root",
        str(CAN0),
        "/etc/systemd/network/80-can0.network",
    ] in cmds
    assert ["systemctl", "enable", "systemd-networkd.service"] in cmds
    # Not started before enrolment: no enable/start of the agent, only the instructions.
    assert not [c for c in cmds if c[0] == "systemctl" and "edge-agent" in " ".join(c[1:])], cmds
    assert "sudo systemctl enable --now edge-agent" in dry_run.out
    assert "enrol-device.sh" in dry_run.out


def test_exec_start_is_the_installed_cli_with_the_installed_config(unit: UnitFile, dry_run: Run) -> None:
    argv = shlex.split(unit.one("Service", "ExecStart"))
    venv_made = {c[3] for c in commands(dry_run) if c[:3] == ["python3", "-m", "venv"]}
    venv_made |= set(re.findall(r"^# virtual environment (\S+) exists$", dry_run.out, re.M))
    assert venv_made == {"/opt/edge-agent/venv"}
    assert argv[0] == "/opt/edge-agent/venv/bin/edge-agent"
    args = build_parser().parse_args(argv[1:])
    assert args.cmd == "run"
    assert args.config == "/etc/edge-agent/edge-agent.toml"
    assert args.duration == 0  # run until SIGTERM
    # install-pi.sh puts the config exactly there (or keeps the one already there).
    assert (
        "+ write /etc/edge-agent/edge-agent.toml (mode 0640, owner root:edge-agent):" in dry_run.out
        or "# /etc/edge-agent/edge-agent.toml exists: kept" in dry_run.out
    )
    assert unit.values("Unit", "AssertPathExists") == [
        "/etc/edge-agent/edge-agent.toml",
        "/etc/edge-agent/device.key",
    ]


def test_print_config_is_a_valid_agent_config_with_the_install_paths(tmp_path: Path) -> None:
    r = run_install(tmp_path, "--print-config")
    assert r.rc == 0 and r.calls == [], r.err
    path = tmp_path / "edge-agent.toml"
    path.write_text(r.out)
    cfg = load_toml(path, AgentConfig)
    assert cfg.edge.key_path == "/etc/edge-agent/device.key"
    assert cfg.edge.spool_path == "/var/lib/edge-agent/spool.sqlite"
    assert cfg.mqtt.tls and cfg.mqtt.port == 8883
    assert cfg.mqtt.ca_file == "/etc/edge-agent/ca.crt"
    assert cfg.mqtt.password_file == "/etc/edge-agent/mqtt.password"
    # Everything else is the example's, untouched.
    rendered, example = tomllib.loads(r.out), tomllib.loads(EXAMPLE_CONFIG.read_text())
    adjusted = {
        "mqtt": {"host", "port", "tls", "ca_file", "password_file"},
        "edge": {"key_path", "spool_path"},
    }
    for section, keys in example.items():
        for key, value in keys.items():
            if key not in adjusted.get(section, set()):
                assert rendered[section][key] == value, (section, key)


def test_print_config_fails_when_the_example_lost_a_key_it_adjusts(tmp_path: Path) -> None:
    (tmp_path / "deploy" / "edge").mkdir(parents=True)
    (tmp_path / "deploy" / "config").mkdir()
    script = tmp_path / "deploy" / "edge" / "install-pi.sh"
    shutil.copy(INSTALL, script)
    text = EXAMPLE_CONFIG.read_text()
    assert re.search(r"^key_path = ", text, re.M)
    (tmp_path / "deploy" / "config" / "edge-agent.example.toml").write_text(
        re.sub(r"^key_path = ", "keypath = ", text, flags=re.M)
    )
    r = run_install(tmp_path, "--print-config", script=script)
    assert r.rc == 1
    assert "edge.key_path" in r.err


@pytest.mark.parametrize(
    ("args", "rc", "message"),
    [
        (["--dry-run"], 2, "SOURCE (a wheel or a source directory) is required"),
        (["--dry-run", "--bogus", "."], 2, "unknown option --bogus"),
        (["--dry-run", "a", "b"], 2, "one SOURCE only"),
        (["--dry-run", "/nonexistent/src"], 1, "no such wheel or directory"),
        (["--dry-run", str(UNIT)], 1, "is not a vehicle_telematics wheel"),
        (["--dry-run", str(EDGE)], 1, "has no pyproject.toml"),
    ],
)
def test_install_usage_errors(tmp_path: Path, args: list[str], rc: int, message: str) -> None:
    r = run_install(tmp_path, *args)
    assert (r.rc, r.calls) == (rc, [])
    assert message in r.err


# --- the unit: identity, restart policy, hardening ----------------------------------------------


def test_identity_and_directories(unit: UnitFile) -> None:
    assert unit.one("Service", "User") == "edge-agent"
    assert unit.one("Service", "Group") == "edge-agent"
    assert not unit.has("Service", "DynamicUser")
    assert unit.one("Service", "StateDirectory") == "edge-agent"
    assert unit.one("Service", "StateDirectoryMode") == "0700"
    assert unit.one("Service", "ConfigurationDirectory") == "edge-agent"
    assert unit.one("Service", "WorkingDirectory") == "/var/lib/edge-agent"
    assert unit.values("Service", "ReadWritePaths") == ["/var/lib/edge-agent"]
    assert not unit.has("Service", "LogsDirectory")  # journald
    assert unit.one("Install", "WantedBy") == "multi-user.target"


def test_restart_policy_and_stop_timeout(unit: UnitFile) -> None:
    assert unit.one("Service", "Type") in {"exec", "simple"}
    # The agent does not speak sd_notify: no watchdog, no notify type.
    assert not unit.has("Service", "WatchdogSec") and not unit.has("Service", "NotifyAccess")
    assert unit.one("Service", "Restart") == "always"
    restart_s = timespan_s(unit.one("Service", "RestartSec"))
    assert restart_s >= 5
    # Start limits belong in [Unit]; in [Service] systemd only warns and ignores them.
    assert not unit.has("Service", "StartLimitIntervalSec") and not unit.has("Service", "StartLimitBurst")
    interval_s = timespan_s(unit.one("Unit", "StartLimitIntervalSec"))
    burst = int(unit.one("Unit", "StartLimitBurst"))
    assert interval_s > 0 and burst > 1
    # Automatic restarts alone never trip the limit: a vehicle without a broker keeps retrying.
    assert math.floor(interval_s / restart_s) + 1 < burst
    assert unit.one("Service", "KillSignal") == "SIGTERM"
    assert timespan_s(unit.one("Service", "TimeoutStopSec")) >= AGENT_STOP_S + 5
    assert "network-online.target" in unit.one("Unit", "Wants").split()
    assert "network-online.target" in unit.one("Unit", "After").split()


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "no",  # the GNSS tty; /dev is closed by DevicePolicy= instead
    "DevicePolicy": "closed",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallErrorNumber": "EPERM",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "UMask": "0077",
    "MemoryMax": "128M",
    "CPUQuota": "50%",
}


@pytest.mark.parametrize(("key", "value"), HARDENING.items())
def test_hardening_directive(unit: UnitFile, key: str, value: str) -> None:
    assert unit.one("Service", key) == value


def test_network_and_system_calls(unit: UnitFile) -> None:
    families = unit.one("Service", "RestrictAddressFamilies").split()
    assert sorted(families) == sorted(["AF_UNIX", "AF_INET", "AF_INET6", "AF_CAN", "AF_NETLINK"])
    # can0 lives in the host's network namespace.
    assert not unit.has("Service", "PrivateNetwork")
    assert unit.values("Service", "SystemCallFilter") == ["@system-service", "~@privileged @resources"]


def test_device_access_is_the_serial_classes_only(unit: UnitFile) -> None:
    allowed = dict(v.split() for v in unit.values("Service", "DeviceAllow"))
    assert allowed == {
        "char-ttyACM": "rw",
        "char-ttyAMA": "rw",
        "char-ttyUSB": "rw",
        "/dev/ttyS0": "rw",
    }
    assert unit.one("Service", "SupplementaryGroups") == "dialout"


def test_can0_network(unit: UnitFile) -> None:
    net = parse_unit(CAN0.read_text())
    assert net.one("Match", "Name") == "can0"
    assert net.one("CAN", "BitRate") == "500K"
    assert net.one("CAN", "SamplePoint") == "87.5%"
    assert timespan_s(net.one("CAN", "RestartSec")) == 0.1
    assert net.one("Link", "RequiredForOnline") == "no"


def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    # verify checks that ExecStart= is executable: point it at a stub with the same arguments.
    stub = tmp_path / "venv" / "bin" / "edge-agent"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    assert text.count("ExecStart=/opt/edge-agent/venv/bin/edge-agent ") == 1
    copy = tmp_path / "edge-agent.service"
    copy.write_text(text.replace("ExecStart=/opt/edge-agent/venv/bin/edge-agent ", f"ExecStart={stub} "))
    p = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False)
    # Unknown or misplaced keys are only warnings ("Unknown key ..., ignoring"): none allowed.
    assert p.returncode == 0 and p.stderr.strip() == "", p.stderr
    p = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    m = re.search(r"Overall exposure level for edge-agent\.service: (\d+\.\d+)", p.stdout)
    assert m, p.stdout + p.stderr
    assert float(m.group(1)) <= 2.0, p.stdout


# --- MemoryDenyWriteExecute=yes holds for the agent's own stack ---------------------------------

# systemd.exec(5): MemoryDenyWriteExecute= refuses mmap() with PROT_WRITE|PROT_EXEC, mprotect() and
# pkey_mprotect() with PROT_EXEC, and shmat() with SHM_EXEC. The probe installs that filter (EPERM,
# as SystemCallErrorNumber=EPERM), checks that it bites, then does what the agent does.
MDWE_PROBE = r"""
import ctypes, errno, importlib, mmap, os, platform, sqlite3, ssl, struct, sys, tempfile

SYSCALLS = {  # audit arch, mmap, mprotect, pkey_mprotect, shmat
    "x86_64": (0xC000003E, 9, 10, 329, 30),
    "aarch64": (0xC00000B7, 222, 226, 288, 196),
}
machine = platform.machine()
if machine not in SYSCALLS:
    sys.exit(f"no syscall numbers for {machine}: add them to MDWE_PROBE")
arch, nr_mmap, nr_mprotect, nr_pkey_mprotect, nr_shmat = SYSCALLS[machine]
W_X, EXEC, SHM_EXEC = 0x2 | 0x4, 0x4, 0o100000
LD, JEQ, JSET, AND, RET = 0x20, 0x15, 0x45, 0x54, 0x06
ALLOW, EPERM = 0x7FFF0000, 0x00050000 | errno.EPERM
NR, ARCH, ARG2 = 0, 4, 32  # offsets in struct seccomp_data


def op(code, k, jt=0, jf=0):
    return struct.pack("HBBI", code, jt, jf, k)


prog = [
    op(LD, ARCH),  # 0
    op(JEQ, arch, 0, 14),  # 1: another ABI -> 16
    op(LD, NR),  # 2
    op(JEQ, nr_mmap, 4, 0),  # 3 -> 8
    op(JEQ, nr_mprotect, 6, 0),  # 4 -> 11
    op(JEQ, nr_pkey_mprotect, 5, 0),  # 5 -> 11
    op(JEQ, nr_shmat, 6, 0),  # 6 -> 13
    op(RET, ALLOW),  # 7
    op(LD, ARG2),  # 8: mmap prot
    op(AND, W_X),  # 9
    op(JEQ, W_X, 4, 5),  # 10 -> 15 / 16
    op(LD, ARG2),  # 11: mprotect prot
    op(JSET, EXEC, 2, 3),  # 12 -> 15 / 16
    op(LD, ARG2),  # 13: shmat flags
    op(JSET, SHM_EXEC, 0, 1),  # 14 -> 15 / 16
    op(RET, EPERM),  # 15
    op(RET, ALLOW),  # 16
]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


code = ctypes.create_string_buffer(b"".join(prog))
fprog = SockFprog(len(prog), ctypes.addressof(code))
libc = ctypes.CDLL(None, use_errno=True)
ul = ctypes.c_ulong
assert libc.prctl(38, ul(1), ul(0), ul(0), ul(0)) == 0, "PR_SET_NO_NEW_PRIVS"
assert libc.prctl(22, ul(2), ul(ctypes.addressof(fprog)), ul(0), ul(0)) == 0, "PR_SET_SECCOMP"

# The filter bites: no W+X mapping, no exec gain.
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("an RWX mapping was allowed: the filter is not in place")
except PermissionError:
    pass
page = mmap.mmap(-1, 4096)
addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
assert libc.mprotect(addr, 4096, mmap.PROT_READ | mmap.PROT_EXEC) == -1
assert ctypes.get_errno() == errno.EPERM

# What the agent does: import its code and its runtime dependencies, keep its key, sign, spool.
for name in ["edge_agent.cli", *sys.argv[1:]]:
    importlib.import_module(name)
from common.keys import generate_key_file, load_key_file
from schemas.crypto import verify

with tempfile.TemporaryDirectory() as d:
    key = generate_key_file(os.path.join(d, "device.key"))
    assert load_key_file(os.path.join(d, "device.key")).public_key == key.public_key
    sig = key.sign(b"block header")
    assert verify(key.public_key, b"block header", sig)
    db = sqlite3.connect(os.path.join(d, "spool.sqlite"))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE blocks (seq INTEGER PRIMARY KEY, body BLOB)")
    db.execute("INSERT INTO blocks VALUES (1, ?)", (sig,))
    db.commit()
    db.close()
ssl.create_default_context()
print("mdwe ok")
"""


def _dist(name: str) -> str:
    """A distribution name, normalised (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def edge_runtime_modules() -> list[str]:
    """Top-level modules of the distributions the edge agent installs (core + the edge extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["edge"]]
    wanted = {_dist(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in reqs}
    provides = {
        mod: {_dist(d) for d in dists}
        for mod, dists in importlib.metadata.packages_distributions().items()
        if not mod.startswith("_")
    }
    modules = sorted(mod for mod, dists in provides.items() if dists & wanted)
    found = set().union(*(provides[mod] for mod in modules))
    assert wanted <= found, f"not installed here: {sorted(wanted - found)} (pip install -e '.[edge]')"
    return modules


def test_the_edge_stack_runs_under_memory_deny_write_execute() -> None:
    modules = edge_runtime_modules()
    assert {"cryptography", "msgspec", "paho"} <= set(modules)
    p = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE, *modules],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert p.returncode == 0 and p.stdout.strip() == "mdwe ok", p.stdout + p.stderr
