"""make verify-azure without a deployment: it says so and exits non-zero, sending nothing anywhere
(the settings are read before any client is made; azd, when present, reads only local files)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_without_a_deployment_it_says_so_and_exits_2() -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SERVICE_", "CONSUMER_", "AZURE_"))
    }
    env["PATH"] = str(Path(sys.executable).parent)  # no azd on it
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "verify_azure.py")], env=env,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        "verify-azure: no deployed azd environment: SERVICE_PRODUCER_URI"
    )
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""
