"""Which ``start`` offsets of one ISS candle query to request, and in what order to use the answers.

ISS pages a query by row offset (``start``) and sends at most a page of rows per request (500 in
every recorded answer, ISS-FACTS 1.4); the documented end is a page with no rows. Paging one offset
after another keeps one request in flight per query. :class:`OffsetPager` keeps up to ``width`` in
flight instead, at interleaved offsets (``0, P, 2P, ...`` with ``P`` the page size), and hands the
pages back in offset order, so that a consumer sees the query's rows in order while they arrive and
can write each day as soon as it is complete.

Nothing here trusts the guessed page size. Requests beyond the first page are *speculative*:

* a page with more rows than the guess raises the stride to its size (pages then overlap; the
  consumer skips what it has already seen);
* a page with fewer rows than the stride is probably the last one: nothing is requested beyond it,
  except its end offset, which must come back empty to end the query (the documented rule). If rows
  come back there instead, the page size was smaller than guessed: the stride becomes the largest
  page seen and every gap is requested at its own offset;
* the query ends only when a page with no rows has come back at an offset the pages before it
  reach, so every row is taken exactly once, in order, whatever the server's page size;
* a bound on the query's rows (``row_bound``, lowered on the way by :meth:`OffsetPager.bound_rows`
  as pages show how late their last bar begins) stops speculation beyond it, but never a request
  that the rows seen make necessary.

The pager is a pure state machine (no I/O, no threads), driven by ``ISSClient.stream_candles``.
"""

from __future__ import annotations

from dataclasses import dataclass

GUESSED_PAGE_SIZE = 500


@dataclass(frozen=True)
class _Page:
    start: int
    rows: int

    @property
    def end(self) -> int:
        return self.start + self.rows


class OffsetPager:
    """The offsets to request for one query and the order in which to consume the pages.

    ``width`` bounds the requests in flight. ``row_bound`` (optional) is the most rows the query can
    hold (e.g. the minutes in its days): no speculative request goes beyond it; requests that the
    rows seen make necessary still do, so a wrong bound costs time, never rows. A query that cannot
    fill ``width`` pages is paged one request at a time, as it would have been without this class:
    speculating there would cost requests (an empty window, a day of hourly bars) and save little.
    """

    def __init__(self, width: int, *, guess: int = GUESSED_PAGE_SIZE, row_bound: int | None = None) -> None:
        if width < 1:
            raise ValueError(f"width must be at least 1, got {width}")
        if guess < 1:
            raise ValueError(f"guess must be at least 1, got {guess}")
        self._width = 1 if row_bound is not None and row_bound <= width * guess else width
        self._stride = guess
        self._row_bound = row_bound
        self._in_flight: set[int] = set()
        self._received: dict[int, _Page] = {}
        self._largest = 0
        # The lowest offset known to hold no rows (an empty page came back there).
        self._limit: int | None = None
        # Where a short page suggests the query ends (unconfirmed until an empty page comes back).
        self._short_end: int | None = None
        self._position = 0
        self._done = False

    # ---------------------------------------------------------------------------------------------
    # State

    @property
    def done(self) -> bool:
        """Every row was handed out and an empty page confirmed the end."""
        return self._done

    @property
    def position(self) -> int:
        """Rows handed out so far (the offset of the next row to consume)."""
        return self._position

    @property
    def stride(self) -> int:
        """The page size in use: the guess until the server showed another."""
        return self._stride

    def wanted(self, offset: int) -> bool:
        """Whether a request for ``offset`` still needs sending (checked just before it is sent).

        False once the query is done, or for a speculative offset beyond a known end; a request
        dropped this way must be reported with :meth:`dropped`.
        """
        if self._done or (self._limit is not None and offset >= self._limit):
            return False
        if self._row_bound is not None and offset >= self._row_bound and offset > self._position:
            return False
        return self._short_end is None or offset <= self._short_end

    # ---------------------------------------------------------------------------------------------
    # Driving

    def next_requests(self, limit: int | None = None) -> list[int]:
        """Offsets to request now (each is then in flight until :meth:`received` or :meth:`dropped`),
        keeping at most ``width`` (or ``limit``, if lower) in flight."""
        most = self._width if limit is None else min(self._width, limit)
        offsets: list[int] = []
        while not self._done and len(self._in_flight) < most:
            offset = self._next_offset()
            if offset is None:
                break
            self._in_flight.add(offset)
            offsets.append(offset)
        return offsets

    def received(self, offset: int, rows: int) -> None:
        """A page came back for ``offset`` with ``rows`` rows (as sent, before any filtering)."""
        if offset not in self._in_flight:
            raise ValueError(f"offset {offset} was not requested")
        if rows < 0:
            raise ValueError(f"rows must be >= 0, got {rows}")
        self._in_flight.discard(offset)
        page = _Page(offset, rows)
        if rows == 0:
            self._limit = offset if self._limit is None else min(self._limit, offset)
        else:
            self._received[offset] = page
            self._largest = max(self._largest, rows)
            self._stride = max(self._stride, rows)
            if self._short_end is not None and page.end > self._short_end:
                # Rows beyond a short page: the server's pages are smaller than the stride.
                self._short_end = None
                self._stride = self._largest
            if rows < self._stride and page.end >= self._known_reach():
                self._short_end = page.end if self._short_end is None else min(self._short_end, page.end)
        self._settle()

    def bound_rows(self, most: int) -> None:
        """The query holds at most ``most`` rows (learned on the way: lowers ``row_bound``, never
        raises it). Speculative requests at or beyond it are not sent; as with ``row_bound``, a
        bound that is too low costs time, never rows."""
        if most < 0:
            raise ValueError(f"most must be >= 0, got {most}")
        self._row_bound = most if self._row_bound is None else min(self._row_bound, most)

    def dropped(self, offset: int) -> None:
        """A request for ``offset`` was not sent (see :meth:`wanted`)."""
        self._in_flight.discard(offset)

    def take(self) -> list[tuple[int, int]]:
        """Pages ready to consume, in order: ``(start, skip)``, where the first ``skip`` rows of the
        page at ``start`` were already handed out with an earlier page (pages overlap only when the
        server's pages are larger than the guess)."""
        ready: list[tuple[int, int]] = []
        while True:
            page = self._covering(self._position)
            if page is None:
                break
            ready.append((page.start, self._position - page.start))
            self._position = page.end
            for start in [s for s, p in self._received.items() if p.end <= self._position]:
                del self._received[start]
        self._settle()
        return ready

    # ---------------------------------------------------------------------------------------------
    # Internals

    def _settle(self) -> None:
        if (
            self._limit is not None
            and self._limit <= self._position
            and self._covering(self._position) is None
        ):
            self._done = True

    def _covering(self, offset: int) -> _Page | None:
        """The received page that holds ``offset`` and reaches furthest, if any."""
        best: _Page | None = None
        for page in self._received.values():
            if page.start <= offset < page.end and (best is None or page.end > best.end):
                best = page
        return best

    def _known_reach(self) -> int:
        """The end of the rows known to exist."""
        return max([self._position] + [page.end for page in self._received.values()])

    def _pending_covers(self, offset: int) -> bool:
        return any(start <= offset < start + self._stride for start in self._in_flight)

    def _next_offset(self) -> int | None:
        position = self._position
        if self._covering(position) is None and not self._pending_covers(position):
            return position
        reach = max([self._known_reach()] + [start + self._stride for start in self._in_flight])
        ceilings = [c for c in (self._limit, self._short_end, self._row_bound) if c is not None]
        if ceilings and reach >= min(ceilings):
            return None
        return reach
