"""``moola label serve``: label windows by eye on a local page, every answer on disk before it returns.

The page (``_label_page.PAGE``) shows one candidate window at a time as a candlestick chart; a
person picks the class and clicks the pattern's first and last bars. Candidates are the rule
labeler's windows (``candidate_windows``: valid ``cfg.window``-bar windows of the store's daily
bars), thinned to one every ``stride`` bars per symbol and shown in a seeded shuffled order, so a
session sees many symbols and years. The labels file is the one ``LabeledWindows`` loads
(``symbol, end_ts, label, pointer_start, pointer_end`` plus ``start_ts``), rewritten whole through a
temp file and ``os.replace`` on every change, so it always parses. Skipped windows go to a sidecar
``<stem>.skipped.csv``; a restart on the same files resumes at the first window neither labeled nor
skipped.
"""

from __future__ import annotations

import csv
import io
import json
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from moola._io import atomic_write_text
from moola.data import TS_DTYPE, Store
from moola.datasets import LabelerConfig, load_labels
from moola.datasets.patterns import CLASSES, LABEL_COLUMNS, candidate_windows, prepare_bars
from moola.features import adjusted_bars
from moola.pipelines._label_page import PAGE

__all__ = ["LabelRequestError", "LabelServer", "LabelSession", "skips_path"]

FILE_COLUMNS: tuple[str, ...] = (*LABEL_COLUMNS, "start_ts")
SKIP_COLUMNS: tuple[str, ...] = ("symbol", "end_ts")
ISO = "%Y-%m-%dT%H:%M:%SZ"  # the rule labeler's spelling of end_ts
MAX_BODY = 64 * 1024
Key = tuple[str, int]  # (symbol, end_ts in ns since the epoch, UTC)


class LabelRequestError(ValueError):
    """A request the session refuses; ``field`` names the offending input for the page to show."""

    def __init__(self, field: str, message: str, status: int = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.status = int(status)


@dataclass(frozen=True)
class Candidate:
    """One window to label: its symbol and first/last rows of the store's daily bars."""

    symbol: str
    start_row: int
    end_row: int
    start_ns: int
    end_ns: int

    @property
    def key(self) -> Key:
        return (self.symbol, self.end_ns)


def skips_path(out: str | Path) -> Path:
    """Where the skipped windows of labels file ``out`` are kept: ``labels.csv`` -> ``labels.skipped.csv``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.skipped.csv")


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns // 10**9, tz=UTC).strftime(ISO)


def _day(ns: int) -> str:
    return datetime.fromtimestamp(ns // 10**9, tz=UTC).strftime("%Y-%m-%d")


def _thin(symbols: np.ndarray, starts: np.ndarray, stride: int) -> np.ndarray:
    """Positions of the windows kept when each symbol keeps one window every ``stride`` rows."""
    keep: list[int] = []
    last_sym, last_start = None, -(1 << 62)
    for i, (s, r) in enumerate(zip(symbols.tolist(), starts.tolist(), strict=True)):
        if s != last_sym or r >= last_start + stride:
            keep.append(i)
            last_sym, last_start = s, r
    return np.asarray(keep, dtype=np.int64)


def _read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a CSV as written (strings), so a rewrite keeps every cell."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = [{k: (v or "") for k, v in r.items() if k is not None} for r in reader]
        return list(reader.fieldnames or []), rows


def _csv_text(columns: list[str], rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _keys_of(path: Path) -> list[Key | None]:
    """(symbol, end_ts ns) of each row of a labels-like CSV; None where a row does not parse."""
    lab = load_labels(path)
    ns = lab.get_column("end_ts").cast(TS_DTYPE).cast(pl.Int64).to_list()
    syms = lab.get_column("symbol").to_list()
    return [(s, int(t)) if s and t is not None else None for s, t in zip(syms, ns, strict=True)]


def _int_field(body: dict[str, Any], name: str) -> int:
    v = body.get(name)
    if isinstance(v, bool) or not isinstance(v, int):
        raise LabelRequestError(name, f"must be an integer bar offset, got {v!r}")
    return v


class LabelSession:
    """The candidate order, the labels file and the skips file; each change is on disk when it returns.

    Thread-safe (one lock): the HTTP server answers requests on several threads.
    """

    def __init__(self, store: str | Path, out: str | Path, config: str | Path | None = None,
                 overrides: list[str] | None = None, *, stride: int | None = None, seed: int = 0) -> None:
        from moola.datasets.tasks import configs_dir

        self.cfg = LabelerConfig.from_yaml(config or configs_dir() / "labeler.yaml", overrides or [])
        self.window = self.cfg.window
        self.stride = self.window if stride is None else int(stride)
        if self.stride < 1:
            raise ValueError(f"--stride must be >= 1, got {self.stride}")
        self.out = Path(out)
        if self.out.suffix.lower() != ".csv":
            raise ValueError(f"{self.out}: the labels file must be a .csv")
        self.skips_file = skips_path(self.out)
        self.classes: tuple[str, ...] = CLASSES
        self._lock = threading.Lock()

        bars = prepare_bars(Store(store))
        ws = candidate_windows(bars, self.cfg)
        keys = ws.matrix.keys
        if keys.height != bars.height:  # the chart reads bars by the matrix's rows
            raise ValueError("feature rows do not line up with the store's bars")
        self._adj = adjusted_bars(bars).select("open", "high", "low", "close", "volume").to_numpy()
        self._ts = keys.get_column("ts").cast(TS_DTYPE).cast(pl.Int64).to_numpy()
        syms = keys.get_column("symbol").to_numpy()
        kept = _thin(syms[ws.starts], ws.starts, self.stride)
        order = kept[np.random.default_rng(seed).permutation(kept.size)]
        self.candidates = [
            Candidate(str(syms[s]), int(s), int(s) + self.window - 1, int(self._ts[s]),
                      int(self._ts[s + self.window - 1]))
            for s in ws.starts[order].tolist()
        ]
        self._index = {c.key: i for i, c in enumerate(self.candidates)}
        self._load_files()
        self._undo: list[tuple[str, Key]] = []  # this session's actions, newest last

    # ---------------------------------------------------------------- files
    def _load_files(self) -> None:
        """Read (or create) the labels and skips files; a restart continues where they end."""
        self._columns: list[str] = list(FILE_COLUMNS)
        self._rows: list[dict[str, str]] = []
        self._row_keys: list[Key | None] = []
        if self.out.exists():
            self._columns, self._rows = _read_csv_rows(self.out)
            missing = [c for c in LABEL_COLUMNS if c not in self._columns]
            if missing:
                raise ValueError(f"{self.out}: labels file lacks column(s) {missing}; the page writes "
                                 f"{list(FILE_COLUMNS)} (use a new --out)")
            self._row_keys = _keys_of(self.out)
            self._columns += [c for c in FILE_COLUMNS if c not in self._columns]
        else:
            self._write_labels()  # the file exists and parses from the first moment
        self._skips: list[Key] = []
        if self.skips_file.exists():
            self._skips = [k for k in _keys_of_skips(self.skips_file) if k is not None]

    def _write_labels(self) -> None:
        atomic_write_text(self.out, _csv_text(self._columns, self._rows))

    def _write_skips(self) -> None:
        rows = [{"symbol": s, "end_ts": _iso(t)} for s, t in self._skips]
        atomic_write_text(self.skips_file, _csv_text(list(SKIP_COLUMNS), rows))

    # ---------------------------------------------------------------- reads
    def _labeled(self) -> set[Key]:
        return {k for k in self._row_keys if k is not None}

    def _current(self) -> int | None:
        done = self._labeled() | set(self._skips)
        return next((i for i, c in enumerate(self.candidates) if c.key not in done), None)

    def _row_summary(self, row: dict[str, str]) -> dict[str, Any]:
        return {k: row.get(k, "") for k in (*LABEL_COLUMNS, "start_ts")}

    def state(self) -> dict[str, Any]:
        """Progress over the candidates, the window to show next and what undo would take back."""
        with self._lock:
            return self._state()

    def _state(self) -> dict[str, Any]:
        labeled = self._labeled()
        n_lab = sum(c.key in labeled for c in self.candidates)
        skipped = set(self._skips) - labeled
        n_skip = sum(c.key in skipped for c in self.candidates)
        return {
            "total": len(self.candidates), "labeled": n_lab, "skipped": n_skip,
            "remaining": len(self.candidates) - n_lab - n_skip, "file_rows": len(self._rows),
            "current": self._current(), "classes": list(self.classes), "window": self.window,
            "out": str(self.out), "can_undo": bool(self._undo or self._rows),
            "last": self._row_summary(self._rows[-1]) if self._rows else None,
        }

    def _candidate(self, index: Any) -> tuple[int, Candidate]:
        if isinstance(index, bool) or not isinstance(index, int):
            raise LabelRequestError("index", f"must be an integer window index, got {index!r}")
        if not 0 <= index < len(self.candidates):
            raise LabelRequestError("index", f"window {index} does not exist (0..{len(self.candidates) - 1})",
                                    HTTPStatus.NOT_FOUND)
        return index, self.candidates[index]

    def window_data(self, index: int) -> dict[str, Any]:
        """The bars of window ``index`` (split-adjusted, as the features see them) and its status."""
        with self._lock:
            i, c = self._candidate(index)
            rows = self._adj[c.start_row : c.end_row + 1]
            days = [_day(int(t)) for t in self._ts[c.start_row : c.end_row + 1]]
            labeled = {k: r for k, r in zip(self._row_keys, self._rows, strict=True) if k is not None}
            row = labeled.get(c.key)
            return {
                "index": i, "position": i + 1, "total": len(self.candidates), "symbol": c.symbol,
                "start_ts": _iso(c.start_ns), "end_ts": _iso(c.end_ns), "days": days,
                "bars": [[round(float(x), 6) for x in r] for r in rows.tolist()],
                "status": "labeled" if row else ("skipped" if c.key in self._skips else None),
                "label": self._row_summary(row) if row else None,
            }

    # ---------------------------------------------------------------- changes
    def label(self, body: Any) -> dict[str, Any]:
        """Append one label row (validated field by field) and rewrite the file atomically."""
        if not isinstance(body, dict):
            raise LabelRequestError("body", "must be a JSON object")
        with self._lock:
            i, c = self._candidate(body.get("index"))
            label = body.get("label")
            if label not in self.classes:
                raise LabelRequestError("label", f"unknown class {label!r} "
                                                 f"(classes: {', '.join(self.classes)})")
            start, end = _int_field(body, "pointer_start"), _int_field(body, "pointer_end")
            for name, v in (("pointer_start", start), ("pointer_end", end)):
                if not 0 <= v < self.window:
                    raise LabelRequestError(name, f"bar {v} is outside the window (0..{self.window - 1})")
            if start > end:
                raise LabelRequestError("pointer_start", f"start bar {start} is after pointer_end {end}")
            if c.key in self._labeled():
                raise LabelRequestError("index", f"window {i} ({c.symbol} {_iso(c.end_ns)}) is already "
                                                 "labeled (undo it first)", HTTPStatus.CONFLICT)
            row = {"symbol": c.symbol, "end_ts": _iso(c.end_ns), "label": str(label),
                   "pointer_start": str(start), "pointer_end": str(end), "start_ts": _iso(c.start_ns)}
            self._rows.append(row)
            self._row_keys.append(c.key)
            try:
                self._write_labels()
            except BaseException:
                self._rows.pop()
                self._row_keys.pop()
                raise
            self._undo.append(("label", c.key))
            return {"saved": self._row_summary(row), "state": self._state()}

    def skip(self, body: Any) -> dict[str, Any]:
        """Mark a window as holding no pattern worth labeling (kept in the skips file)."""
        if not isinstance(body, dict):
            raise LabelRequestError("body", "must be a JSON object")
        with self._lock:
            i, c = self._candidate(body.get("index"))
            if c.key in self._labeled():
                raise LabelRequestError("index", f"window {i} is labeled; undo the label to skip it",
                                        HTTPStatus.CONFLICT)
            if c.key not in self._skips:
                self._skips.append(c.key)
                self._write_skips()
                self._undo.append(("skip", c.key))
            return {"skipped": {"index": i, "symbol": c.symbol, "end_ts": _iso(c.end_ns)},
                    "state": self._state()}

    def undo(self) -> dict[str, Any]:
        """Take back this session's last label or skip; after a restart, the file's last label."""
        with self._lock:
            if self._undo:
                kind, key = self._undo.pop()
            elif self._rows:
                kind, key = "label", self._row_keys[-1] or ("", -1)
            else:
                raise LabelRequestError("undo", "nothing to undo", HTTPStatus.CONFLICT)
            undone: dict[str, Any]
            if kind == "skip":
                self._skips.remove(key)
                self._write_skips()
                undone = {"kind": "skip", "symbol": key[0], "end_ts": _iso(key[1])}
            else:
                pos = max(j for j, k in enumerate(self._row_keys) if k == key) if key[1] >= 0 \
                    else len(self._rows) - 1
                row, k = self._rows.pop(pos), self._row_keys.pop(pos)
                try:
                    self._write_labels()
                except BaseException:
                    self._rows.insert(pos, row)
                    self._row_keys.insert(pos, k)
                    raise
                undone = {"kind": "label", **self._row_summary(row)}
            undone["index"] = self._index.get(key)
            return {"undone": undone, "state": self._state()}


def _keys_of_skips(path: Path) -> list[Key | None]:
    """Keys of the skips file (``symbol, end_ts`` as ``_iso`` writes them); None for a bad row."""
    _, rows = _read_csv_rows(path)
    out: list[Key | None] = []
    for r in rows:
        try:
            t = datetime.strptime(r.get("end_ts", ""), ISO).replace(tzinfo=UTC)
        except ValueError:
            out.append(None)
            continue
        out.append((r.get("symbol", ""), int(t.timestamp()) * 10**9))
    return out


# -------------------------------------------------------------------------------- HTTP
_WINDOW = re.compile(r"^/api/window/(\d+)$")


class _Handler(BaseHTTPRequestHandler):
    """JSON endpoints over one ``LabelSession``; the page itself at ``/``."""

    session: LabelSession
    server_version = "moola-label"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the CLI prints the URL only
        return

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        # the page loads nothing from anywhere: no CDN, no fonts, no network but this server
        self.send_header("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; "
                         "style-src 'unsafe-inline'; connect-src 'self'; img-src data:")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, e: LabelRequestError) -> None:
        self._json(e.status, {"error": str(e), "field": e.field})

    def _local(self) -> bool:
        """Only pages served from this loopback address may talk to it (no DNS rebinding)."""
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        if host in ("127.0.0.1", "localhost", "::1"):
            return True
        self._json(HTTPStatus.FORBIDDEN, {"error": f"Host: {host!r} is not this machine", "field": "Host"})
        return False

    def do_GET(self) -> None:
        if not self._local():
            return
        path = self.path.split("?", 1)[0]
        try:
            if path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
            elif path == "/api/state":
                self._json(HTTPStatus.OK, self.session.state())
            elif m := _WINDOW.match(path):
                self._json(HTTPStatus.OK, self.session.window_data(int(m.group(1))))
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"path: no such page {path!r}", "field": "path"})
        except LabelRequestError as e:
            self._error(e)

    def do_POST(self) -> None:
        if not self._local():
            return
        path = self.path.split("?", 1)[0]
        actions = {"/api/label": self.session.label, "/api/skip": self.session.skip,
                   "/api/undo": lambda _body: self.session.undo()}
        try:
            if path not in actions:
                raise LabelRequestError("path", f"no such endpoint {path!r}", HTTPStatus.NOT_FOUND)
            self._json(HTTPStatus.OK, actions[path](self._body()))
        except LabelRequestError as e:
            self._error(e)

    def _body(self) -> Any:
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            raise LabelRequestError("Content-Type", "must be application/json",
                                    HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise LabelRequestError("Content-Length", "must be an integer") from None
        if n > MAX_BODY:
            raise LabelRequestError("body", f"{n} bytes is over {MAX_BODY}",
                                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        raw = self.rfile.read(n) if n else b"{}"
        try:
            return json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LabelRequestError("body", f"not JSON ({e})") from None


class LabelServer:
    """The page and its API on ``host:port`` (port 0: a free one), served from a daemon thread."""

    def __init__(self, session: LabelSession, host: str = "127.0.0.1", port: int = 0) -> None:
        handler = type("Handler", (_Handler,), {"session": session})
        self.session, self.host = session, host
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> LabelServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="moola-label-serve",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering and free the port; every label is already on disk."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> LabelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
