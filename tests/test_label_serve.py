"""`moola label serve` over HTTP: labels land in a file LabeledWindows loads after every request,
undo, resume after a restart, skips, and bad requests answered 400 with the field named."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _data_helpers import cli
from _label_helpers import WINDOW, build_store, call, load_written
from moola.datasets import load_labels, make_labels_file
from moola.pipelines.label_serve import LabelServer, LabelSession, skips_path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_store(tmp_path_factory.mktemp("label_serve"))


def _serve(store: Path, out: Path) -> LabelServer:
    return LabelServer(LabelSession(store, out), port=0).start()


@pytest.fixture
def server(store: Path, tmp_path: Path) -> Iterator[LabelServer]:
    srv = _serve(store, tmp_path / "labels.csv")
    yield srv
    srv.stop()


def _label_current(port: int, label: str, start: int, end: int) -> dict[str, Any]:
    status, st = call(port, "GET", "/api/state")
    assert status == 200
    i = st["current"]
    status, win = call(port, "GET", f"/api/window/{i}")
    assert status == 200 and len(win["bars"]) == WINDOW and len(win["days"]) == WINDOW
    status, r = call(port, "POST", "/api/label",
                     {"index": i, "label": label, "pointer_start": start, "pointer_end": end})
    assert status == 200, r
    return {"index": i, "symbol": win["symbol"], "end_ts": win["end_ts"], "label": label,
            "pointer_start": start, "pointer_end": end}


def _rows(store: Path, out: Path) -> list[tuple[str, str, str, int, int]]:
    """The file's rows as LabeledWindows accepts them (strict: a bad or half row fails here)."""
    lw = load_written(out, store)
    assert lw.pointers is not None or len(lw) == 0
    ends = [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in lw.meta["end_ts"].to_list()]
    ptr = lw.pointers.tolist() if lw.pointers is not None else []
    return [(s, e, lw.classes[int(y)], int(p[0]), int(p[1]))
            for s, e, y, p in zip(lw.meta["symbol"].to_list(), ends, lw.y.tolist(), ptr, strict=True)]


def _as_row(d: dict[str, Any]) -> tuple[str, str, str, int, int]:
    return (d["symbol"], d["end_ts"], d["label"], d["pointer_start"], d["pointer_end"])


def test_label_three_undo_one_restart_and_resume(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    srv = _serve(store, out)
    assert out.exists() and _rows(store, out) == []  # the file exists and parses from the start
    done = []
    plan = (("consolidation", 10, 30), ("retracement", 50, 50), ("consolidation", 0, 104))
    for label, a, b in plan:
        done.append(_label_current(srv.port, label, a, b))
        assert _rows(store, out) == [_as_row(d) for d in done]  # parses after every request
    assert len({d["index"] for d in done}) == 3
    status, st = call(srv.port, "GET", "/api/state")
    assert (st["labeled"], st["file_rows"], st["can_undo"]) == (3, 3, True)
    assert st["remaining"] == st["total"] - 3

    status, r = call(srv.port, "POST", "/api/undo", {})
    assert status == 200 and r["undone"]["kind"] == "label"
    assert r["undone"]["index"] == done[2]["index"] and r["state"]["current"] == done[2]["index"]
    assert _rows(store, out) == [_as_row(d) for d in done[:2]]
    srv.stop()

    srv = _serve(store, out)  # a restart on the same file resumes where it ends
    try:
        status, st = call(srv.port, "GET", "/api/state")
        assert (st["labeled"], st["current"]) == (2, done[2]["index"])
        status, win = call(srv.port, "GET", f"/api/window/{done[0]['index']}")
        assert win["status"] == "labeled" and win["label"]["label"] == "consolidation"
        again = _label_current(srv.port, "retracement", 3, 7)
        assert again["index"] == done[2]["index"]
        assert _rows(store, out) == [_as_row(d) for d in (*done[:2], again)]
        status, st = call(srv.port, "GET", "/api/state")
        assert st["labeled"] == 3 and st["current"] not in {d["index"] for d in done}
    finally:
        srv.stop()


def test_skip_is_kept_resumed_and_undone(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    srv = _serve(store, out)
    try:
        first = _label_current(srv.port, "consolidation", 1, 2)
        _, st = call(srv.port, "GET", "/api/state")
        skipped = st["current"]
        status, r = call(srv.port, "POST", "/api/skip", {"index": skipped})
        assert status == 200 and r["state"]["skipped"] == 1 and r["state"]["current"] != skipped
        assert skips_path(out).exists() and load_labels(out).height == 1
    finally:
        srv.stop()
    srv = _serve(store, out)
    try:
        _, st = call(srv.port, "GET", "/api/state")
        assert (st["labeled"], st["skipped"]) == (1, 1)
        assert st["current"] not in (first["index"], skipped)
        status, r = call(srv.port, "POST", "/api/skip", {"index": st["current"]})
        status, r = call(srv.port, "POST", "/api/undo", {})  # this session's last action: the skip
        assert r["undone"]["kind"] == "skip" and r["state"]["skipped"] == 1
        status, r = call(srv.port, "POST", "/api/undo", {})  # then the file's last label
        assert r["undone"]["kind"] == "label" and r["undone"]["index"] == first["index"]
        assert _rows(store, out) == []
        status, r = call(srv.port, "POST", "/api/undo", {})
        assert status == 409 and r["field"] == "undo"
    finally:
        srv.stop()


@pytest.mark.parametrize(("patch", "field", "words"), [
    ({"label": "sideways"}, "label", "unknown class 'sideways'"),
    ({"label": None}, "label", "unknown class"),
    ({"pointer_start": 40, "pointer_end": 20}, "pointer_start", "after pointer_end"),
    ({"pointer_end": WINDOW}, "pointer_end", "outside the window"),
    ({"pointer_start": -1}, "pointer_start", "outside the window"),
    ({"pointer_start": "3"}, "pointer_start", "integer"),
    ({"pointer_end": 2.5}, "pointer_end", "integer"),
    ({"pointer_start": True}, "pointer_start", "integer"),
    ({"index": "0"}, "index", "integer"),
])
def test_bad_label_requests_get_400_naming_the_field(server: LabelServer, store: Path, patch: dict[str, Any],
                                                      field: str, words: str) -> None:
    body = {"index": 0, "label": "consolidation", "pointer_start": 10, "pointer_end": 20, **patch}
    status, r = call(server.port, "POST", "/api/label", body)
    assert status == 400, r
    assert r["field"] == field and r["error"].startswith(f"{field}:") and words in r["error"]
    assert _rows(store, server.session.out) == []  # nothing written


def test_other_bad_requests(server: LabelServer, store: Path) -> None:
    port = server.port
    assert call(port, "POST", "/api/label", {"index": 10**6, "label": "consolidation",
                                             "pointer_start": 1, "pointer_end": 2})[1]["field"] == "index"
    status, r = call(port, "POST", "/api/label", raw=b"{not json")
    assert status == 400 and r["field"] == "body"
    status, r = call(port, "POST", "/api/label", [1, 2])
    assert status == 400 and r["field"] == "body"
    status, r = call(port, "POST", "/api/label", raw=b"{}", headers={"Content-Type": "text/plain"})
    assert status == 415 and r["field"] == "Content-Type"
    status, r = call(port, "GET", "/api/window/999999")
    assert status == 404 and r["field"] == "index"
    status, r = call(port, "GET", "/api/state", headers={"Host": "attacker.example:80"})
    assert status == 403  # a page from another origin that resolves to 127.0.0.1 is refused
    _label_current(port, "consolidation", 5, 6)
    status, r = call(port, "POST", "/api/label", {"index": 0, "label": "retracement",
                                                  "pointer_start": 1, "pointer_end": 2})
    assert status == 409 and r["field"] == "index"  # a double submit never duplicates a row
    assert len(_rows(store, server.session.out)) == 1


def test_page_loads_nothing_from_the_network(server: LabelServer) -> None:
    status, page = call(server.port, "GET", "/")
    assert status == 200 and "<svg" in page and "/api/label" in page
    urls = set(re.findall(r"https?://[^\s\"'`)]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls  # the SVG namespace is a name, not a fetch


def test_file_parses_whenever_a_reader_looks(server: LabelServer, store: Path) -> None:
    """A reader polling the file while labels and undos are written never sees a half row."""
    out, port = server.session.out, server.port
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(len(_rows(store, out)))
            except BaseException as e:  # pragma: no cover - the failure this test looks for
                errors.append(e)
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for k in range(8):
            _label_current(port, ("consolidation", "retracement")[k % 2], k, k + 10)
            if k % 3 == 2:
                assert call(port, "POST", "/api/undo", {})[0] == 200
    finally:
        stop.set()
        reader.join()
    assert not errors, errors[0]
    assert seen and set(seen) <= set(range(9))
    assert len(_rows(store, out)) == 8 - 2


def test_rule_labeler_cli_is_unchanged(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "rules.csv"
    res = cli("label", "--store", store, "--out", out)
    assert res.exit_code == 0, res.stderr
    assert "labeled windows ->" in res.stdout and "unlabeled pool" in res.stdout
    expected = tmp_path / "expected.csv"
    make_labels_file(expected, store)
    assert out.read_text() == expected.read_text()
    capped = tmp_path / "capped.csv"
    assert cli("label", "--store", store, "--out", capped, "max_per_symbol=1").exit_code == 0
    assert 1 <= load_labels(capped).height <= 3
    capped.unlink()
    assert cli("label", "max_per_symbol=1", "--store", store, "--out", capped).exit_code == 0  # as before
    assert 1 <= load_labels(capped).height <= 3
    missing = cli("label", "--store", store)
    assert missing.exit_code == 2 and "--out" in missing.stderr
    assert cli("label", "serve", "--help").exit_code == 0
    with socket.socket() as taken:  # a port already in use is a usage error, not a traceback
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = cli("label", "serve", "--store", store, "--out", tmp_path / "x.csv", "--port",
                   str(taken.getsockname()[1]))
    assert busy.exit_code == 2 and "--port" in busy.stderr


def test_cli_serve_prints_the_url_and_stops_on_ctrl_c(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "moola.cli", "label", "serve", "--store", str(store),
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:  # the URL line comes once the server listens
            lines.append(line)
            if m := re.search(r"http://127\.0\.0\.1:(\d+)/", line):
                port = int(m.group(1))
                break
        else:
            pytest.fail("no URL printed:\n" + "".join(lines))
        assert call(port, "GET", "/api/state")[1]["labeled"] == 0
        _label_current(port, "retracement", 20, 40)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert "stopped: 1 of" in rest and "Traceback" not in rest
    assert len(_rows(store, out)) == 1
