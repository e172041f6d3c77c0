"""
Run model-written Python safely, fast and in parallel: the tool of THOR's trajectories.

In:  Python source, one ```python block (blocks are independent, paper §2).
Out: ExecResult(ok, stdout, error, timed_out, seconds, stderr); format_observation(result) is
     the text that goes inside the ```output block (docs/design.md).

    with Sandbox(workers=2, timeout_s=10.0, memory_mb=2048) as sb:
        r = sb.run("import sympy\nprint(sympy.factorint(360))")
        rs = sb.run_many(codes)  # same order, `workers` cells at a time

Design. `python -c` per cell pays ~0.5 s to import sympy. Instead each worker slot is a warm
server process (a "zygote") started with subprocess, never forked from the caller (which may
have CUDA initialised). It imports math, numpy, sympy, fractions, itertools once, then forks
one child per cell, so every cell starts with them loaded and with nothing an earlier cell
defined, patched or left running. The next cell is forked and set up while the caller is busy
elsewhere, and waits for its code on stdin (this halves the latency of a call). Each cell:
  - is its own process group, dies with its worker, then has stdin = /dev/null (input() fails);
  - writes stdout/stderr into pipes the worker reads: `output_kb` KB each, then it is killed;
  - runs in a fresh temp dir (cwd, HOME, TMPDIR), removed afterwards, with the worker's env,
    which holds only PATH, locale and thread settings (none of the caller's secrets);
  - has rlimits: address space memory_mb, CPU time timeout+1 s, file size file_mb, max_procs
    processes and threads, no core dumps;
  - as root: runs as an unprivileged uid unique to its worker, without groups, no_new_privs, so
    it cannot modify others' files nor signal the worker, the caller or other workers' cells,
    and RLIMIT_NPROC counts its worker only. Directories others may not enter on the way to
    Python (pyenv under /root) are covered, in the worker's own mount namespace, by a tmpfs
    holding just those paths;
  - has no network: the worker lives in an empty network namespace (as root, or through a user
    namespace otherwise), so even 127.0.0.1 is unreachable.
The worker enforces the wall-clock timeout, SIGKILLs the cell's group and, as a child subreaper,
every process that escaped it, and reaps them all. The caller restarts a worker that dies or
hangs (backstop: timeout + 10 s). ok = exit status 0 AND something printed (THOR's rule).
A cell ends with its last line (threads it left are killed, atexit hooks do not run); stdout
is line-buffered, so what it printed before os._exit() is kept.

NOT protected against (a guard for a workstation, not a security boundary): kernel exploits;
what any local user may do: read world-readable files, see the process list, fill world-
writable dirs (/tmp, /dev/shm; file_mb caps one file, not their number, and such files outlive
the cell), use Unix sockets and devices open to all (/dev/nvidia*, though under the default
memory cap torch cannot even load); CPU and memory contention up to the limits. Without
root, cells run as you: they can change your files and signal your processes (a killed worker
is restarted), RLIMIT_NPROC counts all your processes unless the user namespace worked, and
if it did not, the network stays open (a warning; Sandbox.network_isolated is False).
"""

import ctypes
import gc
import json
import os
import queue
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import types
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection

PRELOAD = ("math", "fractions", "itertools", "numpy", "sympy")  # imported once per worker
UID_BASE = 1 << 30          # as root, a worker's cells run as uid = UID_BASE + worker pid
STARTUP_S = 120.0           # importing sympy on a busy machine can take seconds
BACKSTOP_S = 10.0           # caller waits timeout_s + this before it declares a worker hung
OBS_CHARS = 256             # observation length limit (THOR: first 128 + "..." + last 128)

# Linux constants for prctl(2), unshare(2) and mount(2), called through libc.
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x20000, 0x10000000, 0x40000000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]


def _libc_call(name, *args):
    if getattr(_libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass
class ExecResult:
    ok: bool               # exited normally (status 0) AND printed something
    stdout: str            # captured stdout, at most output_kb KB (cut by the worker), decoded
    error: str | None      # None, or one line: last stderr line, timeout, signal, output limit
    timed_out: bool        # killed by the wall-clock limit
    seconds: float         # wall time of the call, as the caller saw it
    stderr: str = ""       # captured stderr (same cap), for debugging


def format_observation(r: ExecResult) -> str:
    """What goes inside the ```output block (docs/design.md): stdout on success, else the one-line
    error (the timeout message on timeout); stripped like THOR's release, and anything longer
    than 256 chars keeps its first and last 128 around '...'."""
    text = (r.stdout if r.ok else (r.error or r.stdout)).strip()
    if len(text) > OBS_CHARS:
        text = text[:OBS_CHARS // 2] + "..." + text[-OBS_CHARS // 2:]
    return text


# -----------------------------------------------------------------------------
# The worker ("zygote"): runs as `python sandbox.py --worker FD CONFIG`, never in the caller.

def _serve(fd, cfg):
    conn = Connection(fd)
    root = os.geteuid() == 0
    uid = UID_BASE + os.getpid() if root else None
    # unshare(2) wants a single-threaded process: isolate before importing numpy.
    network_isolated = _cut_network(root)
    if root:
        _expose_to_cells([p for p in sys.path[1:] if os.path.isdir(p)] + [cfg["base"]])
    for name in PRELOAD:
        __import__(name)
    sys.path[0] = ""  # like `python -c`: the cell's cwd first, not this file's directory
    workdir = os.path.join(cfg["base"], str(os.getpid()))  # the caller removes it if we die
    os.mkdir(workdir, 0o711)
    # Orphans of a cell (double fork, setsid) are re-parented to us, so we can kill and reap them.
    _libc_call("prctl", PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    gc.freeze()  # keep the warm heap out of the children's GC: fewer copy-on-write page faults
    conn.send({"network_isolated": network_isolated})
    cell = _fork_cell(workdir, uid, cfg)
    while True:
        try:
            code = conn.recv()
        except (EOFError, ConnectionResetError):  # the caller closed the sandbox or died
            _kill_all(cell[0])  # and reap the waiting cell, so it is nobody's zombie
            return
        try:
            conn.send(_run_cell(cell, code, cfg))
        except (BrokenPipeError, ConnectionResetError):
            return
        # Off the caller's clock: clean up, then fork and set up the next cell ahead of time.
        shutil.rmtree(cell[1], ignore_errors=True)  # its temp dir
        cell = _fork_cell(workdir, uid, cfg)


def _cut_network(root):
    """Move this process into a new, empty network namespace (loopback down, no interfaces)."""
    try:
        if root:
            _libc_call("unshare", CLONE_NEWNET)
        else:  # an unprivileged user may own a network namespace through a user namespace
            uid, gid = os.geteuid(), os.getegid()
            _libc_call("unshare", CLONE_NEWUSER | CLONE_NEWNET)
            for name, text in [("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                               ("gid_map", f"{gid} {gid} 1")]:
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        return True
    except OSError:
        return False


def _expose_to_cells(paths):
    """Let the cells' unprivileged uid reach Python's own files (e.g. pyenv under /root, mode
    700) without opening the rest: in a private mount namespace of this worker, each directory
    that others cannot enter on the way to `paths` is covered by an empty tmpfs, and only the
    entries on those paths are bind-mounted back into it."""
    closed = {}  # directory others cannot enter -> names inside it that lead to `paths`
    for path in paths:
        parts = os.path.realpath(path).split("/")[1:]
        for i, name in enumerate(parts):
            parent = "/" + "/".join(parts[:i])
            if not os.stat(parent).st_mode & 0o001:
                closed.setdefault(parent, set()).add(name)
    if not closed:
        return
    _libc_call("unshare", CLONE_NEWNS)
    _libc_call("mount", None, b"/", None, MS_REC | MS_PRIVATE, None)  # nothing leaks to the host
    for parent in sorted(closed, key=len):  # outer directories first
        keep = {name: os.open(os.path.join(parent, name), os.O_PATH) for name in closed[parent]}
        _libc_call("mount", b"tmpfs", parent.encode(), b"tmpfs", 0, b"mode=711")
        for name, fd in keep.items():
            os.mkdir(os.path.join(parent, name))
            _libc_call("mount", f"/proc/self/fd/{fd}".encode(),
                       os.path.join(parent, name).encode(), None, MS_BIND | MS_REC, None)
            os.close(fd)


def _fork_cell(workdir, uid, cfg):
    """Fork a cell that sets itself up, then waits for its code on stdin."""
    tmp = tempfile.mkdtemp(dir=workdir)
    if uid is not None:
        os.chown(tmp, uid, uid)
    (code_r, code_w), (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # the cell: whatever happens, it must never return into the server loop
        try:
            _cell(tmp, uid, code_r, out_w, err_w, cfg)
        except BaseException:  # a failure while setting the cell up
            traceback.print_exc()
        finally:
            os._exit(1)
    for fd in (code_r, out_w, err_w):
        os.close(fd)
    return pid, tmp, code_w, out_r, err_r


def _run_cell(cell, code, cfg):
    """Hand the waiting cell its code; collect its output until it exits, times out or passes
    the output cap; then kill and reap everything it started."""
    pid, _, code_w, out_r, err_r = cell
    try:
        with open(code_w, "wb") as f:  # closing it is the cell's signal to start
            f.write(code.encode("utf-8", "surrogatepass"))
    except BrokenPipeError:  # the cell died while it waited; its status says how
        pass
    pidfd = os.pidfd_open(pid)
    bufs = {out_r: bytearray(), err_r: bytearray()}
    cap = cfg["output_kb"] * 1024
    try:
        end = _read_pipes(bufs, cap, time.monotonic() + cfg["timeout_s"], pidfd)
        status = _kill_all(pid)
        # Everything is dead, so the pipes hold a bounded remainder: read it up to the cap.
        drained = _read_pipes(bufs, cap, time.monotonic() + 1.0)
    finally:
        for fd in (out_r, err_r, pidfd):
            os.close(fd)
    return {"stdout": bytes(bufs[out_r]), "stderr": bytes(bufs[err_r]), "status": status,
            "timed_out": end == "timeout", "overflow": "overflow" in (end, drained)}


def _cell(tmp, uid, code_r, out_w, err_w, cfg):
    parent = os.getppid()
    os.setsid()  # own session and process group: one killpg reaches everything it forks
    os.dup2(code_r, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # not the worker's control socket, nor pipes
    os.chdir(tmp)
    for res, limit in [(resource.RLIMIT_AS, cfg["memory_mb"] << 20),
                       (resource.RLIMIT_CPU, int(cfg["timeout_s"]) + 1),
                       (resource.RLIMIT_FSIZE, cfg["file_mb"] << 20),
                       (resource.RLIMIT_NPROC, cfg["max_procs"]),
                       (resource.RLIMIT_CORE, 0)]:
        resource.setrlimit(res, (limit, limit))
    if uid is not None:  # root: become the slot's unprivileged uid (drops all capabilities)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    _libc_call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid binaries grant nothing
    # Die with the worker. Armed after the uid change, which would clear it.
    _libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the worker died before it was armed
        return
    os.environ.update(HOME=tmp, TMPDIR=tmp)
    tempfile.tempdir = tmp  # the worker's cached value would point elsewhere
    sys.stdout, sys.stderr = [open(fd, "w", encoding="utf-8", errors="backslashreplace",
                                   buffering=1, closefd=False) for fd in (1, 2)]
    sys.__stdout__, sys.__stderr__ = sys.stdout, sys.stderr
    sys.argv = ["-c"]
    main = types.ModuleType("__main__")  # a fresh namespace, as `python -c` would have
    sys.modules["__main__"] = main
    # Set up: now wait for the code. The worker closes the pipe after writing it.
    code = b"".join(iter(lambda: os.read(0, 1 << 16), b"")).decode("utf-8", "surrogatepass")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # input() then fails fast with EOFError
    sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", closefd=False)
    try:
        exec(compile(code, "<string>", "exec"), main.__dict__)
        status = 0
    except SystemExit as e:  # as the interpreter does: None -> 0, an int -> itself, else print, 1
        if e.code is None or isinstance(e.code, int):
            status = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            status = 1
    except BaseException as e:  # as `python -c` prints it (without this frame), in one write so
        # that the tracebacks of the cell's forked copies do not interleave
        sys.stderr.write("".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next)))
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(status & 0xFF)


def _read_pipes(bufs, cap, deadline, pidfd=None):
    """Read the cell's pipes into bufs until they close or, with pidfd, until the cell exits.
    Returns "timeout" at the deadline, "overflow" when a stream passes cap (kept: cap bytes)."""
    pipes = list(bufs)
    while pipes or pidfd is not None:  # a cell may close its pipes and go on running
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        for fd in select.select(pipes + ([pidfd] if pidfd is not None else []), [], [], left)[0]:
            if fd == pidfd:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                pipes.remove(fd)
            bufs[fd] += chunk
            if len(bufs[fd]) > cap:
                del bufs[fd][cap:]
                return "overflow"
    return None


def _kill_all(pid):
    """SIGKILL the cell and everything it started, reap them all, return the cell's status."""
    try:
        os.kill(pid, signal.SIGKILL)  # the cell itself, even if it has not yet called setsid()
        os.killpg(pid, signal.SIGKILL)  # its group
    except ProcessLookupError:
        pass
    status = os.waitpid(pid, 0)[1]
    # Whatever left the group was re-parented to us (subreaper) when its parent died: kill our
    # children, reap one, repeat; each reaped parent hands its own children over to us first.
    while True:
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            children = [int(c) for c in f.read().split()]
        for child in children:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return status


# -----------------------------------------------------------------------------
# The caller's side: a pool of workers, each used by one thread at a time.

class _Worker:
    def __init__(self, cfg, env):
        self.cfg, self.env = cfg, env
        self.proc = self.conn = self.hello = None

    def spawn(self):
        """Start the worker process; it warms up while the caller goes on (see ready)."""
        ours, theirs = socket.socketpair()
        with theirs:
            self.proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--worker", str(theirs.fileno()),
                 json.dumps(self.cfg)],
                pass_fds=[theirs.fileno()], env=self.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, start_new_session=True)  # no Ctrl-C from the terminal
        self.conn, self.hello = Connection(ours.detach()), None

    def ready(self):
        """Wait for the hello the worker sends once its imports are done; return it."""
        try:
            if self.hello is None and self.conn.poll(STARTUP_S):
                self.hello = self.conn.recv()
        except EOFError:
            pass
        if self.hello is None:
            self.kill()
            raise RuntimeError("sandbox worker failed to start (its traceback, if any, is above)")
        return self.hello

    def run(self, code, timeout_s):
        if self.proc.poll() is not None:  # died since the last call
            self.restart()
        self.ready()
        try:
            self.conn.send(code)
            if self.conn.poll(timeout_s + BACKSTOP_S):
                return self.conn.recv()
        except (EOFError, OSError):
            pass
        self.restart()  # it died (a non-root cell may kill it) or hung: replace it now
        return None

    def restart(self):
        self.kill()
        self.spawn()

    def kill(self):
        self.conn.close()
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(os.path.join(self.cfg["base"], str(self.proc.pid)), ignore_errors=True)

    def stop(self):
        self.conn.close()  # the worker sees EOF, reaps its waiting cell and exits
        try:
            self.proc.wait(timeout=self.cfg["timeout_s"] + BACKSTOP_S)
        except subprocess.TimeoutExpired:
            self.kill()


def _shutdown(workers, base, owner):
    if os.getpid() != owner:  # a forked copy of the caller must not stop the caller's workers
        return
    for w in workers:
        if w.proc is not None:
            w.stop()
    shutil.rmtree(base, ignore_errors=True)


class Sandbox:
    """A pool of `workers` warm worker processes. run/run_many are thread-safe. Use it with
    `with`, or keep one for a whole run: close() (also called at interpreter exit) stops it."""

    def __init__(self, workers=2, timeout_s=10.0, memory_mb=2048, output_kb=1024, file_mb=64,
                 max_procs=64):
        self.timeout_s, self.output_kb = timeout_s, output_kb
        base = tempfile.mkdtemp(prefix="sandbox-")
        os.chmod(base, 0o711)  # cells may traverse to their own dir, not list the others
        cfg = dict(base=base, timeout_s=timeout_s, memory_mb=memory_mb, output_kb=output_kb,
                   file_mb=file_mb, max_procs=max_procs)
        # The worker's environment is all a cell inherits (even /proc/self/environ): no secrets.
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "LANG": "C.UTF-8",
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        if "PYTHONPATH" in os.environ:  # where numpy/sympy may live
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        self._workers = [_Worker(cfg, env) for _ in range(workers)]
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, base, os.getpid())
        for w in self._workers:  # start all, then wait: they import sympy in parallel
            w.spawn()
        infos = [w.ready() for w in self._workers]
        self.network_isolated = all(i["network_isolated"] for i in infos)
        if not self.network_isolated:
            warnings.warn("sandbox: could not create a network namespace; cells have network")
        self._idle = queue.SimpleQueue()
        for w in self._workers:
            self._idle.put(w)

    def run(self, code: str) -> ExecResult:
        if not self._finalizer.alive:
            raise RuntimeError("Sandbox is closed")
        worker = self._idle.get()
        t0 = time.perf_counter()
        try:
            reply = worker.run(code, self.timeout_s)
        finally:
            self._idle.put(worker)
        return self._result(reply, time.perf_counter() - t0)

    def run_many(self, codes: list[str]) -> list[ExecResult]:
        with ThreadPoolExecutor(len(self._workers)) as pool:
            return list(pool.map(self.run, codes))

    def _result(self, reply, seconds):
        if reply is None:
            error = "SandboxError: the worker died or hung and was restarted"
            return ExecResult(False, "", error, False, seconds)
        stdout = reply["stdout"].decode("utf-8", errors="replace")
        stderr = reply["stderr"].decode("utf-8", errors="replace")
        status, error = reply["status"], None
        if reply["timed_out"]:
            error = f"TimeoutError: execution timed out after {self.timeout_s:g} s"
        elif reply["overflow"]:
            error = f"OutputLimitError: output exceeded {self.output_kb} KB"
        elif os.WIFSIGNALED(status):  # e.g. "Killed by signal 11: Segmentation fault"
            sig = os.WTERMSIG(status)
            error = f"Killed by signal {sig}: {signal.strsignal(sig)}"
        elif os.WEXITSTATUS(status) != 0:
            lines = [line for line in stderr.splitlines() if line.strip()]
            error = lines[-1].strip() if lines else f"Exited with status {os.WEXITSTATUS(status)}"
        ok = error is None and stdout != ""
        return ExecResult(ok, stdout, error, reply["timed_out"], seconds, stderr)

    def close(self):
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":  # how Sandbox starts a worker: python sandbox.py --worker FD CONFIG
    _serve(int(sys.argv[2]), json.loads(sys.argv[3]))
