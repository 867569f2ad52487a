"""StreamTail: incremental decoding, line splitting and the bounded tail."""

from __future__ import annotations

from localbuilder.communicator.output import MAX_LINE_CHARS, TAIL_CHARS, TAIL_LINES, StreamTail


def lines_of(chunks: list[bytes]) -> list[str]:
    seen: list[str] = []
    tail = StreamTail("stdout", lambda stream, line: seen.append(line))
    for chunk in chunks:
        tail.feed(chunk)
    tail.finish()
    return seen


def test_lines_across_chunks_and_crlf() -> None:
    assert lines_of([b"a", b"b\r\nc", b"\n", b"last"]) == ["ab", "c", "last"]


def test_multibyte_split_at_every_position() -> None:
    data = "héllo wörld ✓\n".encode()
    for cut in range(len(data)):
        assert lines_of([data[:cut], data[cut:]]) == ["héllo wörld ✓"]


def test_invalid_and_truncated_utf8() -> None:
    assert lines_of([b"\xff ok\n", b"end \xe2\x9c"]) == ["\ufffd ok", "end \ufffd"]


def test_long_line_is_cut() -> None:
    assert [len(x) for x in lines_of([b"z" * (2 * MAX_LINE_CHARS + 1)])] == [
        MAX_LINE_CHARS,
        MAX_LINE_CHARS,
        1,
    ]


def test_tail_is_bounded_by_lines_and_chars() -> None:
    tail = StreamTail("stdout", None)
    tail.feed(b"".join(b"%d\n" % i for i in range(10 * TAIL_LINES)))
    tail.finish()
    assert tail.text().splitlines() == [str(i) for i in range(9 * TAIL_LINES, 10 * TAIL_LINES)]
    big = StreamTail("stdout", None)
    big.feed((b"q" * 1000 + b"\n") * 500)
    big.finish()
    assert len(big.text()) <= TAIL_CHARS
    assert big.dropped_lines > 0 and big.total_bytes == 1001 * 500
