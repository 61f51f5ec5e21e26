"""Processes the harness starts: pinning, running as the PostgreSQL OS user, ports, /proc readings.

Every long-lived process is started through `Service`, which records its PID; `stop_all()` ends exactly
those PIDs (never by name), so an interrupted run leaves nothing behind.
"""
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_services = []


class Pinning:
    """Where the harness runs things: one CPU for every process when `cpu` is set, or anywhere."""

    def __init__(self, cpu):
        self.cpu = cpu

    def wrap(self, argv):
        return ["taskset", "-c", str(self.cpu)] + list(argv) if self.cpu is not None else list(argv)


def pg_os_user():
    """The unprivileged account PostgreSQL and PgBouncer run as (both refuse root); scripts/ensure-deps.sh makes one."""
    for name in ("postgres", "cutover-pg"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise SystemExit("no 'postgres' or 'cutover-pg' OS user: run scripts/ensure-deps.sh")


def as_pg_user(argv):
    """`setpriv` execs in place (unlike runuser/su, which fork), so the PID we hold is the server's own."""
    if os.geteuid() != 0:
        return list(argv)
    user = pg_os_user()
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"] + list(argv)


def chown_to_pg(path):
    if os.geteuid() == 0:
        shutil.chown(path, pg_os_user(), pg_os_user())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc=None, timeout=30.0, what="server"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def run(argv, log=None, check=True, env=None, input_path=None, stdout=None, timeout=None):
    """Runs a short command; its output goes to `log` (a path) so failures can be read later."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    stdin = open(input_path, "rb") if input_path else subprocess.DEVNULL
    try:
        p = subprocess.run(argv, stdout=stdout if stdout is not None else out, stderr=out, stdin=stdin,
                           env=env, timeout=timeout)
    finally:
        if log:
            out.close()
        if input_path:
            stdin.close()
    if check and p.returncode != 0:
        raise RuntimeError(f"command failed ({p.returncode}): {' '.join(argv)}" + (f"; see {log}" if log else ""))
    return p


class Service:
    """A long-running process (server or proxy) started by the harness and stopped by its PID."""

    def __init__(self, name, argv, log_path, env=None, cwd=None, stop_signal=signal.SIGTERM, signal_child=False):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.stop_signal = stop_signal
        # Under a tracer that forks (strace), the server is the tracer's child: signal it, and the tracer
        # writes its report and exits when the server does.
        self.signal_child = signal_child
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=cwd, start_new_session=True)
        _services.append(self)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=60.0):
        if self.alive():
            try:
                for pid in (self.children() if self.signal_child else []) or [self.proc.pid]:
                    os.kill(pid, self.stop_signal)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self._log.close()
        if self in _services:
            _services.remove(self)

    def children(self):
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    def cpu_seconds(self):
        return cpu_seconds(self.pid)

    def cpu_times(self):
        return cpu_times(self.pid)

    def rss_kb(self):
        return rss_kb(self.pid)


def stop_all():
    for s in reversed(list(_services)):
        try:
            s.stop(timeout=20)
        except Exception as e:  # keep stopping the others
            print(f"warning: could not stop {s.name} (pid {s.pid}): {e}")


def cpu_times(pid):
    """(utime, stime) of the whole process (all threads) from /proc/PID/stat, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime and stime are fields 14 and 15.
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def cpu_seconds(pid):
    """utime + stime of the whole process (all threads), in seconds."""
    return sum(cpu_times(pid))


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def load_average():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])



def process_tree(root_pid):
    """A process and its direct children (a postmaster and its backends)."""
    pids = [root_pid]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == root_pid:
            pids.append(int(entry))
    return pids


def set_affinity_tree(root_pid, cpu):
    """Moves a postmaster and its backends to `cpu`; backends forked later inherit the postmaster's affinity."""
    for pid in process_tree(root_pid):
        try:
            os.sched_setaffinity(pid, {cpu})
        except (ProcessLookupError, PermissionError):
            pass
