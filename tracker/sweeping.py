"""The background sweep of `tracker serve --sweep-every`: every so often, the live calls last
heard of too long ago are ended (`Tracker.sweep`), asking Bandwidth first when a resolver is
given, by one server at a time however many serve one database.

What an operator can rely on:

1. **One sweeper.** A round starts only under the lease `sweep` (`tracker.leasing`): of several
   servers on one database, the one holding it sweeps and the others skip their rounds while
   it lasts. The holder keeps it from round to round (its term is three sweep periods, at
   least 30 s and at most 15 minutes) and renews it while it sweeps, so a long sweep is never
   joined by a second one. A holder that dies without giving it up blocks the sweep for one
   term at most; then another server takes it over.
2. **Clean stops.** Asked to stop (SIGTERM: the ASGI lifespan's shutdown), the sweep ends
   between two transactions (each batch of expired calls, each batch of provider answers
   applied, is one already), never inside one: the look-ups of the batch under way not yet
   made are not made, and those calls stay live. The lease is given up, so another server
   sweeps at once.
3. **Failures stay in their round.** A database failure ends the round, is logged, and the next
   round tries again; the server goes on taking callbacks. A provider look-up that fails for
   one call leaves that call live for the next round (`Tracker.sweep`); refused or missing
   credentials (`ProviderError.refused`) end the round, logged once a round.
4. **What it did, said once a round.** A round that looked at calls logs one line (logger
   `tracker.sweeping`, INFO): the holder, when it ran, and how many calls it looked at,
   expired, resolved by the provider, kept and failed to look up. Nothing logged carries a
   credential.

Time: the lease is measured by the database's clock (`tracker.leasing`); a call's age by this
process's UTC clock, as `Tracker.sweep` measures it, so keep the servers' clocks in time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

from tracker import instants, leasing
from tracker.errors import SchemaError, StorageError, check_batch_size
from tracker.facts import PROVIDER, SWEPT
from tracker.housekeeping import SWEEP_BATCH_SIZE, Body, Resolve
from tracker.provider import ProviderError
from tracker.records import Call, SweepReport
from tracker.tracker import Tracker

LEASE_NAME: Final = "sweep"
# The lease's term: three sweep periods, so that the holder keeps it from one round to the next
# and a server that died is replaced within three periods; at least long enough for one batch
# or one provider look-up (with its retries) between two renewals, at most what an operator
# would wait for another server to take over.
LEASE_PERIODS: Final = 3
MIN_LEASE_TERM: Final = timedelta(seconds=30)
MAX_LEASE_TERM: Final = timedelta(minutes=15)
# A stopping server waits this long for the sweep's current transaction (a batch, or one
# look-up with its retries); past it the process exits anyway, the transaction is rolled back
# by the database, and the lease expires by itself.
STOP_TIMEOUT: Final = 30.0

_log = logging.getLogger(__name__)


class BackgroundSweep:
    """Sweeps `tracker` every `every` in a thread of its own, ending the live calls last heard
    of more than `older_than` ago, `batch_size` per transaction, offering each to `resolve`
    first when given. `create_app(tracker, sweep=...)` starts it with the ASGI lifespan's
    startup and stops it with its shutdown; a host that does not run the lifespan calls
    `start()` and `stop()` itself. `lease_term` overrides the lease's term (see the module);
    `holder` the name this process holds it by."""

    def __init__(
        self,
        tracker: Tracker,
        *,
        every: timedelta,
        older_than: timedelta,
        resolve: Resolve | None = None,
        batch_size: int = SWEEP_BATCH_SIZE,
        lease_term: timedelta | None = None,
        holder: str | None = None,
    ) -> None:
        for name, value in (("every", every), ("older_than", older_than)):
            if not isinstance(value, timedelta) or value <= timedelta(0):
                raise ValueError(f"{name} must be a positive timedelta; got {value!r}")
        check_batch_size(batch_size)
        if lease_term is None:
            lease_term = min(max(LEASE_PERIODS * every, MIN_LEASE_TERM), MAX_LEASE_TERM)
        self.tracker = tracker
        self.every = every
        self.older_than = older_than
        self.resolve = resolve
        self.batch_size = batch_size
        self.lease = leasing.Lease(tracker.engine, LEASE_NAME, term=lease_term, holder=holder)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._ended: Counter[str] = Counter()
        self._rounds = 0
        # Why this round stopped early (`_keep_going`), and the look-ups it skipped for that.
        self._stopped_because: str | None = None
        self._not_asked = 0
        # The lease is renewed from the sweep's thread and from the resolver's threads.
        self._renewing = threading.Lock()
        self._other_holder: str | None = None

    @property
    def holder(self) -> str:
        """The name this process holds the lease by (`host:pid:random` by default)."""
        return self.lease.holder

    @property
    def rounds(self) -> int:
        """The rounds this process swept (holding the lease) so far."""
        return self._rounds

    def ended(self) -> dict[str, int]:
        """The calls this process's sweeps ended, by `end_source`: `sweep` (expired) and
        `provider` (the resolver's answer ended them)."""
        return {SWEPT: self._ended[SWEPT], PROVIDER: self._ended[PROVIDER]}

    def provider_requests(self) -> dict[str, int]:
        """The resolver's requests by outcome, as it counts them (its `requests` mapping, as
        `tracker.bandwidth`'s resolver keeps one); empty without a resolver or such a count."""
        requests: Mapping[str, int] | None = getattr(self.resolve, "requests", None)
        if requests is None:
            return {}
        return {str(outcome): int(count) for outcome, count in dict(requests).items()}

    def start(self) -> None:
        """Start sweeping: a first round at once, then one every `every`."""
        if self._thread is not None:
            raise RuntimeError("this background sweep was started already")
        # A daemon: a host that never stops it must still be able to exit; a transaction cut
        # off by the exit is rolled back by the database.
        self._thread = threading.Thread(target=self._run, name="tracker-sweeper", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the sweep to stop at its next transaction's end, without waiting for it (a
        signal handler's share of `stop`)."""
        self._stopping.set()

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Stop sweeping: the round under way ends between two transactions and the lease is
        given up. Whether it stopped within `timeout` seconds (if not, it is left to end with
        the process, and its lease to expire)."""
        self._stopping.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            _log.warning(
                "the background sweep did not stop within %g s; its lease %r expires by itself",
                timeout,
                LEASE_NAME,
            )
            return False
        return True

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                began = time.monotonic()
                self._round()
                elapsed = time.monotonic() - began
                self._stopping.wait(max(0.0, self.every.total_seconds() - elapsed))
        finally:
            self._give_up()

    def _round(self) -> None:
        """One round: take (or keep) the lease, sweep under it. Every failure ends here."""
        self._stopped_because = None
        self._not_asked = 0
        try:
            if not self.lease.acquire():
                self._say_who_sweeps()
                return
            self._other_holder = None
            started = datetime.now(UTC)
            report = self.tracker.sweep(
                self.older_than,
                now=started,
                resolve=None if self.resolve is None else _Guarded(self.resolve, self),
                batch_size=self.batch_size,
                should_stop=lambda: not self._keep_going(),
            )
        except ProviderError as error:
            # The sweep goes on past a look-up that failed, and stops at refused credentials.
            _log.error(
                "the background sweep stopped: the provider refused the credentials (%s); the "
                "calls not looked at stay live, and the next round asks again",
                error,
            )
        except (StorageError, SchemaError) as error:
            _log.error(
                "the background sweep failed; the next round, in %s, tries again: %s",
                self.every,
                error,
            )
        except Exception:
            _log.exception("the background sweep failed unexpectedly; the next round tries again")
        else:
            self._rounds += 1
            self._count(report)
            self._say_what_it_did(report, started)

    def _keep_going(self) -> bool:
        """Asked before each batch and each look-up: not when the server stops, nor when the
        lease could not be kept. The lease is renewed once a third of its term has passed, so
        that it never expires mid-sweep."""
        with self._renewing:
            if self._stopped_because is not None:
                return False
            if self._stopping.is_set():
                self._stopped_because = "the server is stopping"
            elif self._renewal_due() and not self.lease.renew():
                self._stopped_because = "the lease was lost to another server"
            return self._stopped_because is None

    def _stop_because(self, reason: str) -> None:
        with self._renewing:
            self._stopped_because = self._stopped_because or reason

    def _skipped(self) -> None:
        with self._renewing:
            self._not_asked += 1

    def _renewal_due(self) -> bool:
        return self.lease.remaining() < self.lease.term.total_seconds() * 2 / 3

    def _count(self, report: SweepReport) -> None:
        self._ended[SWEPT] += len(report.expired)
        self._ended[PROVIDER] += len(report.resolved)

    def _say_what_it_did(self, report: SweepReport, started: datetime) -> None:
        failed = len(report.failed) - self._not_asked
        stopped = ""
        if self._stopped_because is not None:
            stopped = f"; stopped early: {self._stopped_because}"
            if self._not_asked:
                stopped += f", {self._not_asked} left live without asking"
        level = logging.INFO if report.checked or stopped else logging.DEBUG
        _log.log(
            level,
            "swept as %s from %s to %s: %d live calls looked at (older than %s), %d expired, "
            "%d resolved by the provider, %d kept, %d failed to look up%s",
            self.holder,
            instants.text(started, "milliseconds"),
            instants.text(datetime.now(UTC), "milliseconds"),
            report.checked,
            self.older_than,
            len(report.expired),
            len(report.resolved),
            len(report.kept),
            failed,
            stopped,
        )

    def _say_who_sweeps(self) -> None:
        """Once per holder: another server sweeps, so this one skips its rounds."""
        try:
            holding = self.lease.holding()
        except StorageError:
            return
        if holding is None or holding.holder == self._other_holder:
            return
        self._other_holder = holding.holder
        _log.info(
            "%s skips its sweeps: %s holds the lease %r (until %s, by the database's clock)",
            self.holder,
            holding.holder,
            LEASE_NAME,
            instants.text(holding.expires_at, "seconds"),
        )

    def _give_up(self) -> None:
        try:
            self.lease.release()
        except StorageError as error:
            _log.warning(
                "the lease %r could not be given up (%s); it expires by itself within %s",
                LEASE_NAME,
                error,
                self.lease.term,
            )


class _Guarded:
    """The resolver as a round of the background sweep offers calls to it: a call is asked
    about only while the round may go on (`BackgroundSweep._keep_going`); past that it is left
    live without a request, which the sweep counts a failed look-up. So a stopping server does
    not wait for the rest of a batch's look-ups, a sweeper that lost its lease stops asking,
    and refused credentials are not tried again for the rest of the batch. Keeps the
    resolver's `concurrency`, which the sweep reads."""

    def __init__(self, resolve: Resolve, sweep: BackgroundSweep) -> None:
        self.resolve = resolve
        self.sweep = sweep
        self.concurrency = getattr(resolve, "concurrency", 1)

    def __call__(self, call: Call) -> Body | None:
        if not self.sweep._keep_going():
            self.sweep._skipped()
            raise ProviderError(f"{call.call_id} not asked: {self.sweep._stopped_because}")
        try:
            return self.resolve(call)
        except ProviderError as error:
            if error.refused:  # asking on is useless: the rest of the batch is not asked
                self.sweep._stop_because("the provider refused the credentials")
            raise
