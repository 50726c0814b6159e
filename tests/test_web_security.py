"""The web app's guards: --auth that nobody could pass is refused, repeated failed
logins slow down and then lock, uploads are capped at what an import accepts, and
Gradio's temporary copies are cleaned up. Servers run on 127.0.0.1 only."""
from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

import launch
from conftest import ROOT, free_port

USER, PASSWORD = "writer", "correct horse"


# -- parse_args ----------------------------------------------------------------------------
@pytest.mark.parametrize("auth,why", [("writer:", "password"), ("writer:   ", "password"),
                                      (":secret", "user:password"), ("nouser", "user:password"),
                                      (" writer:secret", "space")])
def test_auth_nobody_could_pass_is_refused(auth, why, capsys):
    with pytest.raises(SystemExit) as e:
        launch.parse_args(["--auth", auth])
    assert e.value.code == 2
    assert why in capsys.readouterr().err.strip().splitlines()[-1]


def test_good_auth_is_accepted_on_and_off_loopback():
    assert launch.parse_args(["--auth", "writer:s:e:c"]).auth == "writer:s:e:c"
    args = launch.parse_args(["--host", "0.0.0.0", "--auth", f"{USER}:{PASSWORD}"])
    assert args.host == "0.0.0.0" and args.auth == f"{USER}:{PASSWORD}"
    with pytest.raises(SystemExit):
        launch.parse_args(["--host", "0.0.0.0"])


def test_launch_options_cap_uploads_and_load_the_page_script():
    from engine.importing import MAX_IMPORT_BYTES

    opts = launch.launch_options(launch.parse_args(["--auth", f"{USER}:{PASSWORD}"]))
    assert opts["max_file_size"] == MAX_IMPORT_BYTES
    assert "<script>" in opts["head"] and "#editor textarea" in opts["head"]
    # Gradio awaits auth only if it is a coroutine function; called unawaited, its
    # coroutine would be truthy and let every password in.
    assert inspect.iscoroutinefunction(opts["auth"])
    assert isinstance(opts["auth"].__self__, launch.LoginThrottle)


# -- the login throttle, on a fake clock ------------------------------------------------------
class FakeTime:
    def __init__(self):
        self.now, self.slept = 1000.0, []

    def clock(self):
        return self.now

    async def sleep(self, s):
        self.slept.append(s)
        self.now += s


def run(coro):
    """asyncio.run in a thread of its own: Playwright's sync API (the browser tests in
    the same session) leaves an event loop running in the main thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture
def fake(monkeypatch):
    t = FakeTime()
    monkeypatch.setattr(launch.asyncio, "sleep", t.sleep)
    return t


def test_each_failure_doubles_the_wait_then_locks(fake):
    th = launch.LoginThrottle(USER, PASSWORD, base_s=0.5, max_delay_s=4, lock_after=6,
                              lockout_s=60, clock=fake.clock)
    assert [run(th.check(USER, "guess")) for _ in range(6)] == [False] * 6
    assert fake.slept == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0]
    # Locked: even the right password is refused, at once.
    fake.slept.clear()
    assert run(th.check(USER, PASSWORD)) is False and fake.slept == []
    fake.now += 61
    assert run(th.check(USER, "guess")) is False  # one more failure after the lockout ...
    assert run(th.check(USER, PASSWORD)) is False  # ... locks it again
    fake.now += 61
    assert run(th.check(USER, PASSWORD)) is True
    fake.slept.clear()
    assert run(th.check(USER, PASSWORD)) is True and fake.slept == [0.0]  # a success clears it


def test_parallel_guesses_wait_in_line_and_other_names_do_not_lock_the_user(fake):
    th = launch.LoginThrottle(USER, PASSWORD, base_s=1, max_delay_s=100, lock_after=50,
                              clock=fake.clock)

    async def burst():
        return await asyncio.gather(*[th.check(USER, f"guess {i}") for i in range(5)])

    assert run(burst()) == [False] * 5
    assert sorted(fake.slept) == [0, 1, 2, 4, 8]  # as slow as five in a row
    fake.slept.clear()
    for i in range(60):  # guessing names: their own counter, locked on its own
        run(th.check(f"name{i}", PASSWORD))
    assert run(th.check(USER, PASSWORD)) is True


# -- against a running server ----------------------------------------------------------------
def _serve(tmp_path, temp_dir):
    port = free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(temp_dir), "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "launch.py", "--projects-dir",
                             str(tmp_path / "projects"), "--model", "tiny", "--host",
                             "127.0.0.1", "--port", str(port), "--auth", f"{USER}:{PASSWORD}"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            httpx.get(url + "/", timeout=2)
            return proc, url, log
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise RuntimeError((tmp_path / "server.log").read_text())
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the app did not start in 240 s")


def _stop(proc, log):
    """Stop as Ctrl+C does (Gradio closes its server and runs its shutdown)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.close()


@pytest.fixture
def server(tmp_path):
    temp_dir = tmp_path / "gradio-tmp"
    proc, url, log = _serve(tmp_path, temp_dir)
    try:
        yield proc, url, temp_dir, log
    finally:
        _stop(proc, log)


def _login(client, url, password):
    t = time.monotonic()
    r = client.post(url + "/login", data={"username": USER, "password": password},
                    timeout=60)
    return r, time.monotonic() - t


def test_failed_logins_take_longer_and_longer(server):
    _, url, _, _ = server
    with httpx.Client() as c:
        took = []
        for _ in range(7):  # bounded: 0 + 0.1 + 0.2 + ... + 3.2 s of waiting
            r, s = _login(c, url, "wrong")
            assert r.status_code == 400
            took.append(s)
        assert took[-1] > took[0] + 2.0, took
        assert all(b > a - 0.05 for a, b in zip(took, took[1:])), took
        # The writer still gets in (after the wait), and that clears the count.
        r, s = _login(c, url, PASSWORD)
        assert r.status_code == 200 and r.json() == {"success": True}
        assert s > 3.0
        r, s = _login(c, url, PASSWORD)
        assert r.status_code == 200 and s < 2.0


def test_uploads_are_capped_and_cleaned_up(server):
    from engine.importing import MAX_IMPORT_BYTES

    proc, url, temp_dir, log = server
    with httpx.Client() as c:
        assert _login(c, url, PASSWORD)[0].status_code == 200
        big = b"a" * (MAX_IMPORT_BYTES + 1)
        r = c.post(url + "/gradio_api/upload", files={"files": ("big.txt", big)}, timeout=120)
        assert r.status_code == 413, r.text
        assert not [p for p in temp_dir.rglob("*") if p.is_file() and
                    p.stat().st_size > MAX_IMPORT_BYTES]
        r = c.post(url + "/gradio_api/upload",
                   files={"files": ("chapter.txt", b"Chapter 1\n\nIt was late.\n")}, timeout=60)
        assert r.status_code == 200, r.text
        kept = Path(r.json()[0])
        assert kept.is_file() and temp_dir in kept.parents
    # Gradio's copies go when the server stops (and after an hour while it runs).
    _stop(proc, log)
    assert proc.returncode is not None
    assert not kept.exists()
