"""The CSV reader's line semantics: csv records over physical lines (quoted newlines, U+2028 and
NEL stay inside a cell), blank and delimiter-only lines as counted ``empty_row`` faults, the
delimiter detected or given, batches that add up to the whole file, and paths that are not
regular files named for what they are."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moola.data._readers as readers
from _data_helpers import OHLCV, btc_csv_lines, btc_frame, cli, write_csv_lines
from moola.data import IngestError, MoolaDataError, Store, Timeframe, list_input_files, read_file
from moola.data._readers import parse_delimiter

N = 30
_DEFAULT_BATCH = readers.CSV_BATCH_ROWS


def _with_note(notes: dict[int, str], n: int = N) -> list[str]:
    """The bundled BTC layout plus a free-text ``note`` column (ignored by the reader);
    ``notes`` maps a data row (0-based) to its cell text, written as is."""
    head, *rows = btc_csv_lines(n)
    return [f"{head},note", *(f"{r},{notes.get(i, 'x')}" for i, r in enumerate(rows))]


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def _good(df: pl.DataFrame) -> pl.DataFrame:
    return df if "_fault" not in df.columns else df.filter(pl.col("_fault").is_null())


def _assert_bars(df: pl.DataFrame, n: int = N) -> None:
    src = btc_frame(n)
    assert df.get_column("ts").to_list() == src.get_column("ts").to_list()
    for c in OHLCV:
        np.testing.assert_array_equal(df.get_column(c).to_numpy(), src.get_column(c).to_numpy())


# ------------------------------------------------------------------------ line semantics


def test_quoted_newline_keeps_the_record_whole_and_later_lines_right(tmp_path: Path) -> None:
    lines = _with_note({2: '"first\nsecond"', 5: '"a\r\nb\nc"'})
    p = _write(tmp_path / "BTCUSD_1m.csv", "\n".join(lines) + "\n")
    df = read_file(p).frame
    assert "_fault" not in df.columns
    _assert_bars(df)
    # data row i starts on physical line i + 2, plus one per line break inside earlier cells
    expect = [i + 2 + (i > 2) + 2 * (i > 5) for i in range(N)]
    assert df.get_column("_line").to_list() == expect
    assert expect[3] == 6 and expect[6] == 11  # the rows after each multi-line record


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c"])
def test_unicode_line_separators_stay_inside_a_cell(tmp_path: Path, sep: str) -> None:
    """``str.splitlines`` breaks on these; a CSV record does not."""
    lines = _with_note({3: f"a{sep}b", 4: f'"c{sep}d"'})
    p = _write(tmp_path / "BTCUSD_1m.csv", "\n".join(lines) + "\n")
    df = read_file(p).frame
    _assert_bars(df)
    assert df.get_column("_line").to_list() == list(range(2, N + 2))


@pytest.mark.parametrize(("bom", "eol", "sep"), [("", "\r\n", ","), ("\ufeff", "\n", ";"),
                                               ("\ufeff", "\r\n", "\t")])
def test_bom_and_crlf_keep_lines_and_detection(tmp_path: Path, bom: str, eol: str, sep: str) -> None:
    lines = [ln.replace(",", sep) for ln in btc_csv_lines(N)]
    p = _write(tmp_path / "BTCUSD_1m.csv", bom + eol.join(lines) + eol)
    df = read_file(p).frame
    _assert_bars(df)
    assert df.get_column("_line").to_list() == list(range(2, N + 2))


def test_blank_and_delimiter_only_lines_are_empty_row_faults(tmp_path: Path) -> None:
    head, *rows = btc_csv_lines(N)
    text = "\n".join(["", head, *rows[:4], ",,,,,", "", "   ", *rows[4:10], " , ,,", ",,",
                      *rows[10:]]) + "\n"
    p = _write(tmp_path / "BTCUSD_1m.csv", text)
    df = read_file(p).frame
    faults = df.filter(pl.col("_fault").is_not_null())
    assert faults.get_column("_fault").unique().to_list() == ["empty_row"]
    assert faults.select("_line", "_detail").rows() == [
        (1, "blank line"), (7, "row of only delimiters"), (8, "blank line"), (9, "blank line"),
        (16, "row of only delimiters"), (17, "row of only delimiters"),
    ]
    assert faults.get_column("_file").to_list() == [str(p)] * 6
    for c in ("ts", *OHLCV):
        assert faults.get_column(c).null_count() == faults.height, c
    _assert_bars(_good(df))
    # every physical line but the header is a row of the frame, in file order
    n_lines = text.count("\n")
    assert df.get_column("_line").to_list() == [ln for ln in range(1, n_lines + 1) if ln != 2]


def test_trailing_newline_is_not_a_line_but_a_final_blank_line_is(tmp_path: Path) -> None:
    lines = btc_csv_lines(5)
    plain = read_file(_write(tmp_path / "BTCUSD_1m.csv", "\n".join(lines) + "\n")).frame
    assert "_fault" not in plain.columns and plain.height == 5
    extra = read_file(_write(tmp_path / "BTCUSD_1m.csv", "\n".join(lines) + "\n\n")).frame
    assert extra.filter(pl.col("_fault").is_not_null()).get_column("_line").to_list() == [7]


def test_only_blank_lines_is_an_empty_file(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match=r"file is empty.*3 blank or delimiter-only lines"):
        read_file(_write(tmp_path / "BTCUSD_1m.csv", "\n,,\n  \n"))


def test_header_and_blank_lines_only_has_no_data_rows(tmp_path: Path) -> None:
    p = _write(tmp_path / "BTCUSD_1m.csv", "\n" + btc_csv_lines(0)[0] + "\n,,,,,\n\n")
    with pytest.raises(IngestError, match="no data rows") as e:
        read_file(p)
    assert e.value.line == 2  # the header's line


def test_not_utf8_names_the_line_deep_in_a_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                   ) -> None:
    """The decoder reads ahead in chunks (8 KiB and more): the line must still be exact."""
    lines = btc_csv_lines(800)
    raw = ("\n".join(lines) + "\n").encode().split(b"\n")
    raw[612] = raw[612].replace(b"23", b"2\xff3", 1)  # physical line 613, ~45 KiB in
    p = tmp_path / "BTCUSD_1m.csv"
    p.write_bytes(b"\n".join(raw))
    offset = sum(len(r) + 1 for r in raw[:612]) + raw[612].index(b"\xff")
    for batch in (readers.CSV_BATCH_ROWS, 100):
        monkeypatch.setattr(readers, "CSV_BATCH_ROWS", batch)
        with pytest.raises(IngestError, match="not UTF-8") as e:
            read_file(p)
        assert e.value.line == 613
        assert f"byte {offset}" in str(e.value)


# ------------------------------------------------------------------------------ batches


def _messy_file(tmp_path: Path) -> Path:
    """Blank lines, delimiter-only rows and multi-line cells spread over the file."""
    head, *rows = _with_note({3: '"two\nlines"', 25: '"x\ny\nz"'}, 60)
    out = [head]
    for i, r in enumerate(rows):
        out.append(r)
        if i % 9 == 4:
            out.append("")
        if i % 13 == 7:
            out.append(",,,,,,")
    return _write(tmp_path / "BTCUSD_1m.csv", "\n".join(out) + "\n")


@pytest.mark.parametrize("batch", [1, 2, 7, 61])
def test_batches_give_the_same_frame_as_one_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 batch: int) -> None:
    p = _messy_file(tmp_path)
    whole = read_file(p).frame
    monkeypatch.setattr(readers, "CSV_BATCH_ROWS", batch)
    batched = read_file(p).frame
    assert batched.columns == whole.columns
    assert batched.equals(whole)
    assert whole.filter(pl.col("_fault").is_not_null()).height == 7 + 5
    _assert_bars(_good(whole), 60)


def test_batch_of_only_empty_rows_keeps_file_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                    ) -> None:
    """A delimiter-only row of full width and a blank line go different ways through the loop;
    a batch holding only them must still list them in line order."""
    head, *rows = btc_csv_lines(6)
    empty = ["", ",,,,,", ",,,,,", "", ",,,,,", "", ""]
    p = write_csv_lines(tmp_path / "BTCUSD_1m.csv", [head, *rows[:3], *empty, *rows[3:]])
    whole = read_file(p).frame
    assert whole.get_column("_line").to_list() == list(range(2, 15))
    for batch in range(1, 8):
        monkeypatch.setattr(readers, "CSV_BATCH_ROWS", batch)
        assert read_file(p).frame.equals(whole), batch


@pytest.mark.parametrize("batch", [1, 200_000])
def test_value_error_before_a_later_width_error_is_reported_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    lines = btc_csv_lines(20)
    lines[4] = lines[4].replace(",", ",x", 1)  # physical line 5: open is 'x23...'
    lines[12] += ",7"  # physical line 13: seven fields
    monkeypatch.setattr(readers, "CSV_BATCH_ROWS", batch)
    with pytest.raises(IngestError, match="non-numeric") as e:
        read_file(write_csv_lines(tmp_path / "BTCUSD_1m.csv", lines))
    assert e.value.line == 5


_PIECES = st.sampled_from(["", ",,,,,", "  ", '"a\nb"', "\u2028", "\x85", ";", "\t", "|", '"', "\r"])


def _outcome(path: Path, batch: int) -> tuple[str, pl.DataFrame | int | None]:
    readers.CSV_BATCH_ROWS = batch
    try:
        return "ok", read_file(path).frame
    except MoolaDataError as e:
        return "error", e.line
    finally:
        readers.CSV_BATCH_ROWS = _DEFAULT_BATCH


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 30), _PIECES, st.booleans()), max_size=6),
       sep=st.sampled_from([",", ";", "\t", "|"]))
def test_batched_reads_match_the_whole_file_read(tmp_path: Path, edits: list[tuple[int, str, bool]],
                                                 sep: str) -> None:
    """Blank, delimiter-only, multi-line and odd-character lines anywhere: batches of 1 and 3
    records give the frame one batch gives, or both raise a located error."""
    lines = [ln.replace(",", sep) for ln in btc_csv_lines(12)]
    for i, text, insert in edits:
        i %= len(lines) + 1
        if insert or i == len(lines):
            lines.insert(i, text)
        else:
            lines[i] += text
    p = _write(tmp_path / "BTCUSD_1m.csv", "\n".join(lines) + "\n")
    kind, whole = _outcome(p, _DEFAULT_BATCH)
    for batch in (1, 3):
        other_kind, other = _outcome(p, batch)
        assert other_kind == kind, (batch, lines)
        if isinstance(whole, pl.DataFrame):
            assert isinstance(other, pl.DataFrame) and other.equals(whole), (batch, lines)
        else:  # which error comes first may differ: a batch is parsed before the next is read
            assert (other is None) == (whole is None), (batch, lines)


def test_headerless_layout_is_decided_once_for_all_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [ln.split(",") for ln in btc_csv_lines(40)[1:]]
    kraken = [f"{int(datetime.fromisoformat(r[0]).timestamp())},{','.join(r[1:])},{7 + i}"
              for i, r in enumerate(rows)]
    p = write_csv_lines(tmp_path / "BTCUSD.csv", kraken)
    whole = read_file(p)
    monkeypatch.setattr(readers, "CSV_BATCH_ROWS", 3)
    batched = read_file(p)
    assert batched.format == whole.format
    assert batched.frame.equals(whole.frame)
    assert batched.frame.get_column("trades").to_list() == list(range(7, 47))


def _iso_rows(n: int) -> list[str]:
    return btc_csv_lines(n)[1:]


@pytest.mark.parametrize("batch", [10, 200_000])
def test_offsets_on_some_batches_only_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  batch: int) -> None:
    """One batch parsed with offsets and a later one without must not pass as UTC silently."""
    head = btc_csv_lines(0)[0]
    rows = _iso_rows(30)
    rows[20:] = [r.replace("+00:00", "", 1) for r in rows[20:]]
    p = write_csv_lines(tmp_path / "BTCUSD_1m.csv", [head, *rows])
    monkeypatch.setattr(readers, "CSV_BATCH_ROWS", batch)
    with pytest.raises(IngestError, match="no UTC offset") as e:
        read_file(p)
    assert e.value.line == 22


@pytest.mark.parametrize("batch", [10, 200_000])
def test_epoch_units_across_batches_must_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               batch: int) -> None:
    lines = []
    for i, r in enumerate(ln.split(",") for ln in _iso_rows(20)):
        sec = int(datetime.fromisoformat(r[0]).timestamp())
        lines.append(f"{sec * (1000 if i < 10 else 1_000_000)},{','.join(r[1:])}")
    p = write_csv_lines(tmp_path / "BTCUSD_1m.csv", ["open_time,open,high,low,close,volume", *lines])
    monkeypatch.setattr(readers, "CSV_BATCH_ROWS", batch)
    with pytest.raises(IngestError, match="mix units") as e:
        read_file(p)
    assert e.value.line == 12


def test_repeated_header_beats_a_later_width_error(tmp_path: Path) -> None:
    lines = btc_csv_lines(20)
    lines.insert(5, lines[0])  # physical line 6
    lines[12] += ",7"  # physical line 13
    with pytest.raises(IngestError, match="repeated header") as e:
        read_file(write_csv_lines(tmp_path / "BTCUSD_1m.csv", lines))
    assert e.value.line == 6


# ---------------------------------------------------------------------------- delimiters


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_other_delimiters_ingest_end_to_end(tmp_path: Path, sep: str) -> None:
    lines = [ln.replace(",", sep) for ln in btc_csv_lines(N)]
    p = write_csv_lines(tmp_path / "BTCUSD_1m.csv", lines)
    res = cli("data", "ingest", p, "--store", tmp_path / "store")
    assert res.exit_code == 0, res.output
    bars = Store(tmp_path / "store").read(Timeframe.M1)
    assert bars.height == N
    _assert_bars(bars)


def _pipes_with_commas(tmp_path: Path) -> Path:
    """Pipe-delimited, but a comma-laden note column makes commas split every line into more
    fields: the one case detection cannot get right and ``--delimiter`` must."""
    lines = [ln.replace(",", "|") + "|" + ",".join("abcdefgh") for ln in btc_csv_lines(N)]
    lines[0] = lines[0].rsplit("|", 1)[0] + "|note,b,c,d,e,f,g,h"
    return write_csv_lines(tmp_path / "BTCUSD_1m.csv", lines)


def test_delimiter_option_overrides_detection(tmp_path: Path) -> None:
    p = _pipes_with_commas(tmp_path)
    wrong = cli("data", "ingest", p, "--store", tmp_path / "store")
    assert wrong.exit_code == 2  # detection picked the comma
    res = cli("data", "ingest", p, "--store", tmp_path / "store", "--delimiter", "|")
    assert res.exit_code == 0, res.output
    _assert_bars(Store(tmp_path / "store").read(Timeframe.M1))


@pytest.mark.parametrize("spec", ["tab", "TAB", "\\t", "\t"])
def test_tab_spellings(tmp_path: Path, spec: str) -> None:
    assert parse_delimiter(spec) == "\t"
    p = write_csv_lines(tmp_path / "BTCUSD_1m.csv", [ln.replace(",", "\t") for ln in btc_csv_lines(N)])
    res = cli("data", "ingest", p, "--store", tmp_path / "store", "--delimiter", spec)
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("spec", ["", ";;", '"', "\n", "comma"])
def test_bad_delimiter_option(spec: str) -> None:
    with pytest.raises(IngestError, match="--delimiter"):
        parse_delimiter(spec)


def test_delimiter_detection_ignores_a_bad_row_in_the_sample(tmp_path: Path) -> None:
    lines = [ln.replace(",", ";") for ln in btc_csv_lines(N)]
    lines[4] += ";7|8|9|1|2|3|4"  # one row of another width (and many pipes) on line 5
    with pytest.raises(IngestError, match="expected 6 columns") as e:
        read_file(write_csv_lines(tmp_path / "BTCUSD_1m.csv", lines))
    assert e.value.line == 5


def test_one_column_read_suggests_the_delimiter(tmp_path: Path) -> None:
    p = write_csv_lines(tmp_path / "BTCUSD_1m.csv", [ln.replace(",", ";") for ln in btc_csv_lines(N)])
    with pytest.raises(IngestError, match="one column") as e:
        read_file(p, delimiter=",")
    msg = str(e.value)
    assert "';' splits it into 6 fields" in msg and "--delimiter ';'" in msg
    assert e.value.line == 1
    res = cli("data", "ingest", p, "--store", tmp_path / "store", "--delimiter", ",")
    assert res.exit_code == 2 and "--delimiter ';'" in res.stderr, res.stderr


def test_one_field_row_in_a_comma_file_hints_its_delimiter(tmp_path: Path) -> None:
    lines = btc_csv_lines(N)
    lines[7] = lines[7].replace(",", ";")
    with pytest.raises(IngestError, match=r"found 1.*splits into 6 fields on ';'") as e:
        read_file(write_csv_lines(tmp_path / "BTCUSD_1m.csv", lines))
    assert e.value.line == 8


# --------------------------------------------------------------- not regular files


def _both_raise(path: Path, says: str) -> None:
    for call in (lambda: list_input_files([path]), lambda: read_file(path)):
        with pytest.raises(IngestError) as e:
            call()
        assert says in str(e.value), str(e.value)
        assert str(path) in str(e.value)
        assert "no such file" not in str(e.value)


def test_symlink_loop(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.symlink_to(b)
    b.symlink_to(a)
    _both_raise(a, "symbolic link loop")


@pytest.mark.timeout(20)
def test_fifo_is_named_and_never_opened(tmp_path: Path) -> None:
    """Opening a FIFO with no writer blocks forever: the timeout is the assertion that it is not."""
    p = tmp_path / "BTCUSD.csv"
    os.mkfifo(p)
    _both_raise(p, "is a FIFO (named pipe), not a file")
    with pytest.raises(IngestError, match=r"BTCUSD\.csv.*FIFO"):
        list_input_files([tmp_path])


def test_device_file() -> None:
    _both_raise(Path("/dev/null"), "is a device file")


def test_dangling_symlink_names_its_target(tmp_path: Path) -> None:
    p = tmp_path / "BTCUSD.csv"
    p.symlink_to(tmp_path / "gone" / "BTCUSD.csv")
    _both_raise(p, f"dangling symbolic link to {tmp_path / 'gone' / 'BTCUSD.csv'}")


def test_missing_path_is_still_no_such_file(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no such file or directory"):
        list_input_files([tmp_path / "nope.csv"])


def test_directory_without_data_files_says_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "old.csv.bak").write_text("x")
    with pytest.raises(IngestError, match="no data files") as e:
        list_input_files([tmp_path])
    assert "it has 3 entries: notes.md, old.csv.bak, sub/" in str(e.value)
    empty = tmp_path / "sub"
    with pytest.raises(IngestError, match="it is empty"):
        list_input_files([empty])


def test_read_file_on_a_directory(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="is a directory, not a file"):
        read_file(tmp_path)


@pytest.mark.parametrize(("text", "line"), [('"a\nb;c;d"\n', 1),
                                          ("\n".join(btc_csv_lines(1)) + '\n"p\nq;r;s"\n', 3)])
def test_one_field_record_with_a_quoted_line_break_is_a_plain_error(tmp_path: Path, text: str,
                                                                    line: int) -> None:
    """Suggesting a delimiter re-splits the field; a line break in it must not escape as csv.Error."""
    with pytest.raises(IngestError) as e:
        read_file(_write(tmp_path / "BTCUSD_1m.csv", text))
    assert e.value.line == line


def test_every_line_is_stored_or_a_counted_reject_end_to_end(tmp_path: Path) -> None:
    """Through the CLI: blank and delimiter-only lines are kept as ``empty_row`` rejects with their
    lines, and stored rows + rejects + the header account for every physical line."""
    lines = btc_csv_lines(N)
    lines.insert(3, "")
    lines.insert(7, ",,,,,")
    p = write_csv_lines(tmp_path / "BTCUSD_1m.csv", lines)
    res = cli("data", "ingest", p, "--store", tmp_path / "store")
    assert res.exit_code == 0, res.output
    store = Store(tmp_path / "store")
    bars, rejects = store.read(Timeframe.M1), store.read_rejects(Timeframe.M1)
    _assert_bars(bars)
    assert rejects.select("reason", "line").rows() == [("empty_row", 4), ("empty_row", 8)]
    assert bars.height + rejects.height + 1 == len(lines)


def test_one_column_of_an_unknown_delimiter_points_at_the_option(tmp_path: Path) -> None:
    p = write_csv_lines(tmp_path / "BTCUSD_1m.csv", [ln.replace(",", "#") for ln in btc_csv_lines(N)])
    with pytest.raises(IngestError, match="one column and no header") as e:
        read_file(p)  # no candidate splits it
    assert "--delimiter" in str(e.value)
    res = cli("data", "ingest", p, "--store", tmp_path / "store", "--delimiter", "#")
    assert res.exit_code == 0, res.output
    _assert_bars(Store(tmp_path / "store").read(Timeframe.M1))
