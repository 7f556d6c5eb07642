"""The first code a python-tool process runs, before the model's: isolation, then limits, then the code.

Run as a script (``python -I sandbox_child.py CONFIG``) from ``/``, never imported by ossrun:
``unshare`` needs a process with no threads yet. Two kinds of process:

- a session's holder (``"hold": true``): makes the session's namespaces (``sandbox_jail.hold``),
  says so on stdout as one JSON line, waits until ossrun has taken them ("go" on stdin), then,
  as a probe, makes a run without code to show that the whole jail can be made here;
- a run: joins the session (its descriptors are named in CONFIG), enters the jail, sets its
  limits and the seccomp filter (``sandbox_seccomp.py``) and runs the code that came on stdin;
  like a notebook cell, the value of a final expression is printed.

Where ossrun found no jail possible, a run only sets the limits, in the working directory.
"""

import ast
import json
import linecache
import os
import resource
import sys
import traceback

CELL = "<python>"  # the file name tracebacks give the code
ISOLATION_UNAVAILABLE_EXIT = 111  # "cannot isolate the code: ...": the parent refuses to run code then


def set_limits(config):
    limits = (
        ("RLIMIT_AS", config["memory_bytes"]),
        ("RLIMIT_FSIZE", config["file_bytes"]),
        ("RLIMIT_NPROC", config["processes"]),
        ("RLIMIT_CORE", 0),
    )
    for name, value in limits:
        if value is not None and hasattr(resource, name):
            resource.setrlimit(getattr(resource, name), (value, value))
    cpu = config["cpu_seconds"]
    if cpu is not None:
        # The soft limit sends SIGXCPU; the hard one, a second later, SIGKILL. In the jail, init
        # ends the run at the bound for all its processes together: each one's is a second later.
        cpu += 1 if config["isolate"] else 0
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))


def jail_modules():
    """The jail's modules, beside this one; the code's imports do not see them (nor ossrun's tools)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import sandbox_bounds
        import sandbox_jail
        import sandbox_seccomp
    finally:
        del sys.path[0]
    return sandbox_bounds, sandbox_jail, sandbox_seccomp


def refuse(message):
    sys.stderr.write(f"cannot isolate the code: {message}\n")
    sys.exit(ISOLATION_UNAVAILABLE_EXIT)


def isolate(config):
    """Enter the jail; return (how the code is isolated, its totals), in the code's process only."""
    bounds, jail, _ = jail_modules()
    try:
        jail.new_session_keyring()
        try:
            totals = bounds.Totals(config)  # the run's cgroup files, opened while the host's are in view
        except OSError as exc:
            raise jail.Refused(f"cannot open the run's cgroup ({jail.reason(exc)})") from None
        if config.get("hold"):
            how = jail.hold(config["workdir"], disk_bytes=config["disk_bytes"], disk_files=config["disk_files"])
            print(json.dumps({"held": how}), flush=True)
            if sys.stdin.readline().strip() != "go" or not config["probe"]:
                sys.exit(0)
        else:
            how = config["isolation"]
            jail.join(config.get("user_fd"), config["mount_fd"])
        how = jail.enter(
            config["workdir"],
            totals,
            network=config["network"],
            how=how,
            report_fd=config.get("report_fd"),
            tmp_bytes=config["disk_bytes"],
            tmp_files=config["disk_files"],
        )
    except jail.Refused as exc:
        refuse(exc)
    return how, totals


def filter_system_calls(totals):
    """Install the seccomp filter; say why not where it cannot be."""
    _, _, seccomp = jail_modules()
    if not seccomp.supported():
        return f"system calls are not filtered on {os.uname().machine}"
    try:
        seccomp.install(refuse_memfd=not totals.memory_enforced, keep_sigchld=not totals.cpu_counted)
    except OSError as exc:
        return f"system calls are not filtered ({exc.strerror})"
    return None


def run_cell(source):
    """Run ``source`` as ``__main__``; print the value of a final expression, as a notebook does."""
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    linecache.cache[CELL] = (len(source), None, source.splitlines(True), CELL)  # tracebacks show the lines
    tree = ast.parse(source, CELL)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, CELL, "exec"), namespace)
    if last is not None:
        value = eval(compile(last, CELL, "eval"), namespace)
        if value is not None:
            print(repr(value))


def main():
    config = json.loads(sys.argv[1])
    source = "" if config.get("hold") else sys.stdin.read()  # before the jail: each process it forks has it
    if config["isolate"]:
        how, totals = isolate(config)
        if config["probe"]:
            sys.stdout.write(json.dumps({"isolation": how, "unfiltered": filter_system_calls(totals)}))
            return
        set_limits(config)
        unfiltered = filter_system_calls(totals) if config["seccomp"] else None
        if unfiltered:
            refuse(unfiltered)
    else:
        os.chdir(config["workdir"])
        set_limits(config)
    sys.stdin = open(os.devnull)
    sys.argv = [""]
    sys.path.insert(0, os.getcwd())  # modules written by earlier runs can be imported
    try:
        run_cell(source)
    except SystemExit:
        raise
    except BaseException as exc:
        # Start the traceback at the model's code: this script's frames (and ast's, for a
        # syntax error) are not the model's business.
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != CELL:
            tb = tb.tb_next
        traceback.print_exception(type(exc), exc, tb)
        sys.exit(1)


if __name__ == "__main__":
    main()
