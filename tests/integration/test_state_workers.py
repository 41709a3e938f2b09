"""The service's protocol across real processes: a write through one worker is seen by the next 20 requests on
random workers, and a worker started after kill -9 of all the others replays everything (SQLite and Redis)."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

WORKER = """
import sys
from candgen.state import Record, open_state
from candgen.state.follow import LogFollower

items = set()

def apply(r):
    (items.add if r.kind == "item" else items.discard)(r.data["item_id"])

follower = LogFollower(open_state(sys.argv[1], worker_id=sys.argv[2]), apply)
follower.replay()
print("ready", flush=True)
for line in sys.stdin:
    cmd, arg = line.split()
    if cmd == "has":  # a request: catch up first, then answer from this process's own structures
        follower.catch_up()
        print("yes" if arg in items else "no", flush=True)
    else:  # a write endpoint: durable and applied here before the answer
        follower.write([Record(kind=cmd, data={"item_id": arg})])
        print("ok", flush=True)
"""


class Worker:
    def __init__(self, url: str, name: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, url, name], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.read() == "ready"

    def read(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def ask(self, cmd: str, arg: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{cmd} {arg}\n")
        return self.read()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def check_read_your_writes(url: str) -> None:
    rng = random.Random(0)
    workers = [Worker(url, f"w{i}") for i in range(3)]
    try:
        expected: set[str] = set()
        for round_ in range(6):
            item, deleting = f"i{round_ % 4}", round_ >= 4
            writer = rng.choice(workers)
            assert writer.ask("delete" if deleting else "item", item) == "ok"
            (expected.discard if deleting else expected.add)(item)
            answers = [rng.choice(workers).ask("has", item) for _ in range(20)]
            assert answers == ["no" if deleting else "yes"] * 20, f"round {round_}"
    finally:
        for w in workers:
            w.kill()  # kill -9: nothing gets a chance to flush
    fresh = Worker(url, "restarted")
    try:
        assert [fresh.ask("has", f"i{i}") for i in range(4)] == ["yes" if f"i{i}" in expected else "no"
                                                                 for i in range(4)]
    finally:
        fresh.kill()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path}/journal.sqlite3"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite_url", pytest.param("redis_url", marks=pytest.mark.redis)])
def test_read_your_writes_across_worker_processes_and_restart(
        backend: str, request: pytest.FixtureRequest) -> None:
    check_read_your_writes(request.getfixturevalue(backend))
