"""The keeper of one stdio MCP server: it starts the server and makes sure its processes end with ossrun.

Run as a script (``python -I -S mcp_child.py PARENT_PID NAMES -- COMMAND ARGS...``), never
imported by ossrun: the standard library only. The MCP SDK starts it in a process group of its
own, with the server's stdin, stdout and stderr. It then

- asks Linux for a signal when ossrun's thread that started it ends, however it ends (SIGKILL
  included: ``PR_SET_PDEATHSIG``), and stops at once if ossrun is already gone;
- runs the server with only the environment variables NAMES (what the configuration gives, and
  PATH), as its own child, and leaves the pipes to it, so that their end is the server's end;
- when that signal comes, or ossrun's own stop sends SIGTERM to the group, passes SIGTERM to
  every process of the group and, 2 seconds later, SIGKILL; when the server ends on its own,
  kills what it left in the group;
- writes how the server ended as its last line on stderr (``ossrun-mcp: exit 1``,
  ``ossrun-mcp: signal 9``), which is how ossrun tells a crash from a clean end.

Where there is no parent-death signal (macOS), it only sets the environment and becomes the server.
"""

import ctypes
import json
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
GRACE_SECONDS = 2.0
CANNOT_RUN_EXIT = 127
WATCHED = {getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGCHLD") if hasattr(signal, name)}


def set_parent_death_signal(signum):
    """True where the kernel will send ``signum`` when the parent thread ends (Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0


def become_server(command, env):
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        os.write(2, f"cannot run {command[0]}: {exc.strerror or exc}\n".encode(errors="replace"))
        os._exit(CANNOT_RUN_EXIT)


def report(status):
    """The server's end, as the last line on stderr."""
    if os.WIFSIGNALED(status):
        line = f"ossrun-mcp: signal {os.WTERMSIG(status)}"
    else:
        line = f"ossrun-mcp: exit {os.waitstatus_to_exitcode(status)}"
    try:
        os.write(2, f"\n{line}\n".encode())
    except OSError:
        pass  # nobody reads stderr any more


def end_group(signum):
    try:
        os.killpg(0, signum)
    except OSError:
        pass


def keep(pid):
    """Wait for the server; on a stop signal, stop its whole group (this process last)."""
    deadline = None
    while True:
        if deadline is None:
            info = signal.sigwaitinfo(WATCHED)
        else:
            info = signal.sigtimedwait(WATCHED, max(0.0, deadline - time.monotonic()))
            if info is None:  # the grace is over: whatever is left goes, this process with it
                end_group(signal.SIGKILL)
                return 1
        if info.si_signo == signal.SIGCHLD:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                report(status)
                end_group(signal.SIGKILL)  # what the server left behind in the group, and this process
                return 0
        elif deadline is None:
            end_group(signal.SIGTERM)  # our own copy stays pending (blocked) and is ignored below
            deadline = time.monotonic() + GRACE_SECONDS


def main(argv):
    parent, names, command = int(argv[1]), json.loads(argv[2]), argv[4:]
    env = {name: os.environ[name] for name in names if name in os.environ}
    if not hasattr(signal, "sigtimedwait"):
        become_server(command, env)
    signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    if not set_parent_death_signal(signal.SIGTERM):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WATCHED)
        become_server(command, env)
    if os.getppid() != parent:
        return 0  # ossrun ended before the signal was asked for: start nothing
    pid = os.fork()
    if pid == 0:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WATCHED)
        become_server(command, env)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)  # stdin and stdout are the server's alone: they close when it ends
    return keep(pid)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
