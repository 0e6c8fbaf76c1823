"""The `pruneflow` command run in a child process, its output read as it comes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.helpers.data import REPO
from tests.helpers.polling import wait_until


class Cli:
    """`pruneflow COMMAND CONFIG` in a child process, its output collected as it comes."""

    def __init__(self, config_path: Path, command: str = "run", **env: str):
        from prefect.settings import PREFECT_API_URL

        environment = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONUNBUFFERED": "1", **env}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pruneflow.flows.cli", command, str(config_path)], cwd=REPO, env=environment,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 180) -> None:
        def arrived() -> bool:
            if text not in self.output and self.process.poll() is not None:
                raise TimeoutError("the command ended")
            return text in self.output

        try:
            wait_until(arrived, timeout, f"{text!r} in the output", every=0.1)
        except TimeoutError as error:
            self.stop()
            pytest.fail(f"{error} (exit {self.process.poll()}):\n{self.output[-3000:]}")

    def finish(self, timeout: float = 300) -> int:
        code = self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
