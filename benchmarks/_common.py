"""Shared by the benchmark scripts (run as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import json
import subprocess
import sys


def run_case(script: str, args: list[str], threads: int | None) -> dict:
    """Run ``script --case ARGS`` in a fresh process (its own peak memory and thread
    setting) and return the JSON object it prints on its last line."""
    cmd = [sys.executable, script, "--case", *args]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])
