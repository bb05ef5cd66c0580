"""The `webslm` entry point's exit: after a command that loaded torch it skips the interpreter's
teardown (webslm.launch.end), and must still end as Python would: same exit code, every line
printed, exit handlers run, threads finished, a thread pool left open not waited on forever (the
first version hung there after a compiled run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CHECK = """
import atexit, concurrent.futures, sys, threading, time
from pathlib import Path
import torch  # a command that loaded torch: the fast exit
marker = Path(sys.argv.pop())
atexit.register(lambda: marker.with_suffix(".atexit").write_text("ran"))
def late() -> None:
    time.sleep(0.5)
    marker.with_suffix(".thread").write_text("ran")
threading.Thread(target=late).start()
pool = concurrent.futures.ThreadPoolExecutor(1)  # left open: its idle worker waits to be told
pool.submit(time.sleep, 0.1)
print("x" * 200_000, end="")  # a full pipe buffer, still in the process's buffer at the end
from webslm.launch import run
sys.argv[0] = "webslm"
run()
"""


def write_chat(path: Path, good: bool) -> Path:
    reply = {"role": "assistant", "content": "Hello"} if good else {"role": "robot", "content": 1}
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}, reply]}) + "\n")
    return path


@pytest.mark.parametrize(("good", "code"), [(True, 0), (False, 2)])
def test_after_torch_the_exit_keeps_code_output_handlers_and_threads(tmp_path: Path, good: bool,
                                                                     code: int) -> None:
    pytest.importorskip("torch")
    data = write_chat(tmp_path / "chat.jsonl", good)
    marker = tmp_path / "marker"
    done = subprocess.run([sys.executable, "-c", CHECK, "data", "check", str(data), str(marker)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == code, done.stderr
    assert done.stdout.startswith("x" * 200_000)
    assert ("1 conversations" in done.stdout) == good, done.stdout[200_000:]
    assert ("webslm: error:" in done.stderr) == (not good), done.stderr
    assert marker.with_suffix(".atexit").read_text() == "ran"
    assert marker.with_suffix(".thread").read_text() == "ran"
