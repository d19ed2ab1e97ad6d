"""``split_by_marks`` and ``KeyMarks`` (ingest/storage/lakestore.py): which of a batch's session
events and gaps the lake store may append without reading the table, which it must check, which it
knows stored already, and the keys a writer keeps."""

from __future__ import annotations

from ingest.storage.lakestore import MAX_MARKED_DEVICES, RECENT_KEYS, KeyMarks, split_by_marks
from ingest.storage.schema import GapRow, SessionRow


def _ev(dev: str, boot: int, session: int, event: str = "birth", ts: int = 0) -> SessionRow:
    return SessionRow(dev, boot, session, event, "k", ts, 0, "1", 1, "{}", b"m", 0)


def test_a_key_above_its_devices_latest_is_new_a_known_one_is_dropped_and_others_are_checked() -> None:
    marks = {"a": ((3, 1, "birth"), (3, 2, "birth")), "b": ((1, 0, "shutdown"),)}
    rows = [
        _ev("a", 3, 2, "death"),  # above (3, 2, birth): 'death' > 'birth'
        _ev("a", 3, 2, "birth"),  # known stored: a redelivery
        _ev("a", 3, 1, "birth"),  # known stored
        _ev("a", 2, 9),  # an earlier boot, not known: maybe stored
        _ev("b", 2, 0),
        _ev("c", 0, 0),  # nothing stored for c
    ]
    new, doubtful, added = split_by_marks(SessionRow, rows, marks)
    assert new == [rows[0], rows[4], rows[5]]
    assert doubtful == [rows[3]]
    assert added == {"a": [(3, 2, "death")], "b": [(2, 0, "birth")], "c": [(0, 0, "birth")]}


def test_a_key_twice_in_one_batch_is_kept_once_the_first() -> None:
    first, again = _ev("a", 1, 1, ts=1), _ev("a", 1, 1, ts=2)
    new, doubtful, added = split_by_marks(SessionRow, [first, again, _ev("a", 1, 2), _ev("a", 1, 0)], {})
    # a key below one new in the same batch is not known stored: checked, not trusted
    assert new == [first, _ev("a", 1, 2)] and doubtful == [_ev("a", 1, 0)]
    assert added == {"a": [(1, 1, "birth"), (1, 2, "birth")]}
    new, doubtful, _ = split_by_marks(SessionRow, [first, again], None)
    assert new == [] and doubtful == [first]


def test_without_marks_every_row_is_checked() -> None:
    rows = [GapRow("a", 5, 9, 0), GapRow("b", 0, 3, 0)]
    assert split_by_marks(GapRow, rows, None) == ([], rows, {})
    assert split_by_marks(GapRow, rows, {"a": ((7,),)}) == ([rows[1]], [rows[0]], {"b": [(0,)]})


def test_a_writer_keeps_each_devices_latest_keys_and_only_for_the_generation_they_were_read_in() -> None:
    m = KeyMarks()
    gen, known = m.begin()
    assert known == {}
    m.stored(gen, {GapRow: {"a": ((1,),)}}, {GapRow: {"a": [(4,)], "b": [(0,)]}})
    assert m.begin()[1] == {GapRow: {"a": ((1,), (4,)), "b": ((0,),)}}
    gen, _ = m.begin()
    m.stored(gen, {}, {GapRow: {"a": [(i,) for i in range(10, 30)]}})
    gaps = m.begin()[1][GapRow]
    assert gaps is not None and gaps["a"] == tuple((i,) for i in range(30 - RECENT_KEYS, 30))
    gen, _ = m.begin()
    m.forget()  # a claim, or a failed write, while that batch was being written
    m.stored(gen, {SessionRow: {}}, {GapRow: {"a": [(99,)]}})
    assert m.begin()[1] == {}


def test_a_table_of_too_many_devices_keeps_no_marks() -> None:
    m = KeyMarks()
    gen, _ = m.begin()
    m.stored(gen, {GapRow: {}}, {GapRow: {f"d{i}": [(0,)] for i in range(MAX_MARKED_DEVICES + 1)}})
    assert m.begin()[1] == {GapRow: None}
    m.forget()  # and is not read again after a claim (every row of it is checked anyway)
    assert m.begin()[1] == {GapRow: None}
