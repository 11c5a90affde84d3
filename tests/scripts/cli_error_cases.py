"""Run the `trl-realign` console entry point on several command lines in one process, recording what each wrote.

Usage: python cli_error_cases.py CASES.json REPORT.json
CASES.json holds a list of `{"argv": [...], "env": {...}}`; REPORT.json gets, per case, the exit status and the whole
of what reached file descriptor 2 (so output of loggers that hold the original stderr stream counts too). One process
for all cases: each start costs seconds of imports, and the CLI's test budget is small.
"""

import json
import os
import sys
import tempfile
import traceback

from trl_realign.cli.main import main


def run_case(argv: list[str], env: dict[str, str]) -> dict:
    saved_env = {key: os.environ.get(key) for key in [*env, "TRL_REALIGN_DEBUG"]}
    os.environ.update(env)
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            main(argv)
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:  # a real bug escapes main: the test reports it, traceback included
            traceback.print_exc()
            code = "raised"
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        captured.seek(0)
        return {"argv": argv, "code": code, "stderr": captured.read().decode()}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    report = [run_case(case["argv"], case.get("env", {})) for case in cases]
    with open(sys.argv[2], "w") as f:
        json.dump(report, f)
