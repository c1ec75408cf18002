"""The offset pager: every row handed out once and in order, whatever the server's page size, the
guess, the width, the order in which answers come back and the requests dropped on the way."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from candlestick_pipeline.defs.iss.paging import OffsetPager


class _Server:
    """Rows ``0 .. total-1`` paged by offset, ``page_size`` at a time; ``grow`` more rows appear
    after ``grow_after`` answers (ISS appending bars while a query is paged)."""

    def __init__(self, total: int, page_size: int, grow: int = 0, grow_after: int = 0) -> None:
        self.total = total
        self.page_size = page_size
        self.grow = grow
        self.grow_after = grow_after
        self.answers: list[int] = []

    def answer(self, offset: int) -> int:
        self.answers.append(offset)
        if self.grow and len(self.answers) == self.grow_after:
            self.total += self.grow
        return max(0, min(self.page_size, self.total - offset))


def _page(
    server: _Server,
    width: int,
    *,
    guess: int = 500,
    row_bound: int | None = None,
    seed: int = 0,
    drop_unwanted: bool = True,
    learn: Callable[[int, int], int] | None = None,
) -> list[int]:
    """Drive a pager against ``server`` answering in a random order; the rows handed out.

    ``learn(offset, rows)``, if given, is the bound each answer teaches (``OffsetPager.bound_rows``).
    """
    rng = random.Random(seed)
    pager = OffsetPager(width, guess=guess, row_bound=row_bound)
    pages: dict[int, int] = {}
    pending: list[int] = []
    rows: list[int] = []
    for _ in range(100_000):
        for start, skip in pager.take():
            rows.extend(range(start + skip, start + pages.pop(start)))
        if pager.done:
            return rows
        pending.extend(pager.next_requests())
        assert pending, "the pager stalled"
        assert len(pending) <= width
        offset = pending.pop(rng.randrange(len(pending)))
        if drop_unwanted and not pager.wanted(offset):
            pager.dropped(offset)
            continue
        count = server.answer(offset)
        if count:
            pages[offset] = count
        pager.received(offset, count)
        if learn is not None and count:
            pager.bound_rows(learn(offset, count))
    raise AssertionError("the pager never finished")


@pytest.mark.parametrize("width", [1, 2, 4, 8])
@pytest.mark.parametrize("total", [0, 1, 499, 500, 501, 1500, 2345])
def test_with_the_right_guess_every_row_comes_once_in_order_and_few_pages_are_spent(
    width: int, total: int
) -> None:
    for seed in range(5):
        server = _Server(total, 500)
        assert _page(server, width, seed=seed) == list(range(total))
        needed = math.ceil(total / 500) + (0 if total % 500 else 1)  # the data, then an empty page
        # At most the pages in flight when the end showed, and one empty page to confirm it.
        assert needed <= len(server.answers) <= needed + width
        if width == 1:
            assert server.answers == [500 * i for i in range(needed)] + ([total] if total % 500 else [])


@pytest.mark.parametrize("page_size", [1, 2, 3, 5, 7, 11])
@pytest.mark.parametrize("guess", [1, 3, 6, 500])
@pytest.mark.parametrize("width", [1, 3, 4])
def test_a_wrong_guess_costs_requests_never_rows(page_size: int, guess: int, width: int) -> None:
    for total in (0, 1, page_size, 2 * page_size + 1, 37):
        for seed in range(3):
            server = _Server(total, page_size)
            assert _page(server, width, guess=guess, seed=seed) == list(range(total)), (total, seed)


@pytest.mark.parametrize(("page_size", "guess"), [(300, 500), (1000, 500), (50, 500)])
def test_the_stride_follows_the_page_size_the_server_shows(page_size: int, guess: int) -> None:
    total = 20 * page_size + 17
    for seed in range(5):
        server = _Server(total, page_size)
        assert _page(server, 4, guess=guess, seed=seed) == list(range(total))
        # Once the server's page size shows, no more gaps or overlaps: a few requests over the need.
        assert len(server.answers) <= math.ceil(total / page_size) + 3 * 4


def test_a_short_page_with_rows_beyond_it_sets_the_stride_to_the_server_page_size() -> None:
    pager = OffsetPager(4)
    assert pager.next_requests() == [0, 500, 1000, 1500]
    pager.received(0, 300)  # short of the guess: the end, or pages of 300?
    assert pager.stride == 500
    pager.received(1000, 300)  # rows beyond it: pages of 300
    assert pager.stride == 300
    pager.received(500, 300)
    pager.received(1500, 300)
    assert pager.take() == [(0, 0)]
    assert pager.next_requests() == [300, 1800, 2100, 2400]  # the gap, then on at 300 a page


def test_pages_beyond_a_short_page_are_not_wanted_but_the_next_row_is() -> None:
    pager = OffsetPager(4)
    assert pager.next_requests() == [0, 500, 1000, 1500]
    pager.received(0, 200)  # short: probably the end
    assert [pager.wanted(offset) for offset in (500, 1000, 1500)] == [False, False, False]
    assert pager.take() == [(0, 0)] and pager.wanted(200)
    for offset in (500, 1000, 1500):
        pager.dropped(offset)
    assert pager.next_requests() == [200]  # the empty page that ends it, and nothing beyond
    pager.received(200, 0)
    assert pager.take() == [] and pager.done and not pager.wanted(200)


def test_sending_every_request_even_unwanted_ones_changes_nothing() -> None:
    for seed in range(10):
        assert _page(_Server(1234, 7), 4, guess=10, seed=seed, drop_unwanted=False) == list(range(1234))


@pytest.mark.parametrize("row_bound", [0, 1, 100, 10_000])
def test_a_wrong_row_bound_costs_time_never_rows(row_bound: int) -> None:
    for seed in range(5):
        assert _page(_Server(2500, 500), 4, row_bound=row_bound, seed=seed) == list(range(2500))


def test_the_row_bound_stops_speculation() -> None:
    server = _Server(900, 500)
    # 900 rows can hold at most 1000: pages 0 and 500, then the empty page at 900. Nothing at 1000+.
    assert _page(server, 8, row_bound=1000) == list(range(900))
    assert max(server.answers) == 900


def test_a_bound_learned_from_a_page_stops_speculation_beyond_it() -> None:
    pager = OffsetPager(4)
    assert pager.next_requests() == [0, 500, 1000, 1500]
    pager.received(0, 500)
    pager.bound_rows(1200)  # the last bar of page 0 leaves room for 700 more rows at most
    pager.bound_rows(5000)  # a looser bound learned later changes nothing
    assert [pager.wanted(offset) for offset in (500, 1000, 1500)] == [True, True, False]
    pager.dropped(1500)
    pager.received(500, 500)
    assert pager.next_requests() == []  # nothing at 1500 or beyond: no row can be there
    pager.received(1000, 200)
    assert pager.take() == [(0, 0), (500, 0), (1000, 0)]
    assert pager.next_requests() == [1200]  # the empty page that ends the query is still asked for
    pager.received(1200, 0)
    assert pager.done
    with pytest.raises(ValueError, match="most"):
        pager.bound_rows(-1)


@pytest.mark.parametrize("slack", [-700, -1, 0, 1, 333, 10_000])
def test_a_learned_bound_costs_time_never_rows_and_a_true_one_saves_requests(slack: int) -> None:
    total = 4321
    for width in (2, 4, 8):
        for seed in range(5):
            server = _Server(total, 500)
            # What a page's last bar teaches: at most ``total - end + slack`` rows after it.
            learned = _page(server, width, seed=seed, learn=lambda offset, rows: total + slack)
            assert learned == list(range(total)), (width, seed)
            if 0 <= slack < 500 - total % 500:
                # Nothing past the end but the empty page that confirms it (offset 4321).
                assert sorted(server.answers) == [*range(0, total, 500), total], (width, seed)


def test_rows_appended_while_paging_are_taken_too() -> None:
    for seed in range(10):
        server = _Server(1200, 500, grow=300, grow_after=2)
        assert _page(server, 4, seed=seed) == list(range(1500))


def test_misuse_is_refused() -> None:
    with pytest.raises(ValueError, match="width"):
        OffsetPager(0)
    with pytest.raises(ValueError, match="guess"):
        OffsetPager(1, guess=0)
    pager = OffsetPager(2)
    with pytest.raises(ValueError, match="not requested"):
        pager.received(500, 3)
    [first, second] = pager.next_requests()
    assert (first, second) == (0, 500)
    with pytest.raises(ValueError, match="rows"):
        pager.received(0, -1)


def test_a_short_page_with_rows_already_known_beyond_it_does_not_stop_the_stream() -> None:
    pager = OffsetPager(3)
    assert pager.next_requests() == [0, 500, 1000]
    pager.received(500, 500)
    pager.received(0, 300)  # shorter, but rows beyond it have come already (offsets shifted)
    assert pager.wanted(1000)
    assert pager.take() == [(0, 0)] and pager.next_requests() == [300, 1500]


def test_a_query_too_small_to_fill_the_width_is_paged_one_request_at_a_time() -> None:
    assert OffsetPager(4, row_bound=24 * 60 + 1).next_requests() == [0]  # a day of 1-minute bars
    assert OffsetPager(4, row_bound=2 * 24 * 60 + 1).next_requests() == [0, 500, 1000, 1500]
    server = _Server(840, 500)
    assert _page(server, 4, row_bound=24 * 60 + 1) == list(range(840))
    assert server.answers == [0, 500, 840]
