"""Runs `launch.py` in forked children of one process that has already imported JAX and jaxdl.

A child runs the real file with `runpy` as `__main__`, argv and working directory as
given and stdout/stderr in files, so it takes the launcher's own error path exactly
as `python launch.py ...` would; only the imports (seconds each time) are shared.
The parent never initialises a JAX backend, so no XLA thread exists at fork time.

Protocol: one JSON object per line on stdin, {"argv": [...], "cwd": ..., "env": {...},
"stdout": path, "stderr": path}; one line back on stdout, {"rc": exit status}.
"""
import json
import os
import runpy
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import absl.app  # noqa: E402,F401
import jax  # noqa: E402,F401
import ml_collections.config_flags  # noqa: E402,F401
import orbax.checkpoint  # noqa: E402,F401
import tensorflow_datasets  # noqa: E402,F401

import jaxdl.loop  # noqa: E402,F401
import jaxdl.tasks.detection  # noqa: E402,F401
import jaxdl.tasks.segmentation  # noqa: E402,F401
import jaxdl.train  # noqa: E402,F401
import jaxdl.validate  # noqa: E402,F401


def child(request: dict) -> int:
    os.chdir(request["cwd"])
    os.environ.update(request.get("env", {}))
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.argv = [os.path.join(ROOT, "launch.py"), *request["argv"]]
    sys.path[0] = ROOT  # what `python launch.py` puts first
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException:  # what the interpreter would print for an uncaught exception
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def main():
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os._exit(child(request))
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()
