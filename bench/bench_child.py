"""Shared by the benchmarks: each measured mode runs in its own subprocess (so peak memory is per mode) and reports
one `RESULT <json>` line on stdout."""

import json
import subprocess

PREFIX = 'RESULT '


def emit_result(result):
    """Print a child's result dict as the line run_child() reads."""
    print(PREFIX + json.dumps(result), flush=True)


def run_child(cmd, label):
    """Run cmd; return the dict of its last RESULT line, or None after printing its stderr tail."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(PREFIX)]
    if proc.returncode != 0 or not lines:
        print(f'{label}: failed\n{proc.stderr[-3000:]}')
        return None
    return json.loads(lines[-1][len(PREFIX):])
