"""Follow every Bandwidth Voice call: callbacks parsed, applied to a per-call state machine,
correlated with their transfer legs, and persisted.

    from tracker import Tracker

    tracker = Tracker("sqlite:///tracker.db")
    tracker.upgrade()
    result = tracker.apply(body)
"""

from tracker.billing import BillingPolicy
from tracker.errors import ConflictError, SchemaError, StorageError, TrackerError
from tracker.facts import END_SOURCES
from tracker.lifecycle import ALL_DISPOSITIONS, DISPOSITIONS, LIVE_STATES, STATES, TRANSITIONS
from tracker.provider import ProviderCall, ProviderError
from tracker.reconciling import ReconciledCall, ReconcilePage, ReconcileReport, ReconcileStatus
from tracker.records import (
    REDRIVEN_OUTCOMES,
    Call,
    CallDifference,
    CallStatistics,
    Change,
    ChangesPage,
    Event,
    IgnoredReason,
    InvalidReason,
    Outcome,
    Reason,
    RebuildReport,
    RedriveReport,
    Result,
    SchemaUpgrade,
    SweepReport,
    TransferAttempt,
    Transition,
)
from tracker.tracker import DEFAULT_DATABASE_URL, Tracker

__all__ = [
    "ALL_DISPOSITIONS",
    "DEFAULT_DATABASE_URL",
    "DISPOSITIONS",
    "END_SOURCES",
    "LIVE_STATES",
    "REDRIVEN_OUTCOMES",
    "STATES",
    "TRANSITIONS",
    "BillingPolicy",
    "Call",
    "CallDifference",
    "CallStatistics",
    "Change",
    "ChangesPage",
    "ConflictError",
    "Event",
    "IgnoredReason",
    "InvalidReason",
    "Outcome",
    "ProviderCall",
    "ProviderError",
    "Reason",
    "RebuildReport",
    "ReconcilePage",
    "ReconcileReport",
    "ReconcileStatus",
    "ReconciledCall",
    "RedriveReport",
    "Result",
    "SchemaError",
    "SchemaUpgrade",
    "StorageError",
    "SweepReport",
    "Tracker",
    "TrackerError",
    "TransferAttempt",
    "Transition",
]
