"""The errors `tracker` raises. Bad input never raises: it becomes an `invalid` result."""


class TrackerError(Exception):
    """Base class of every error the tracker raises on purpose."""


class SchemaError(TrackerError):
    """The database's tracker schema is missing, behind or ahead; the message names the fix."""


class StorageError(TrackerError):
    """The database failed while a delivery was applied, and nothing of it was written.

    Answer the webhook with a non-2xx status (or keep the body and apply it again later):
    applying the same body again is safe and gives the outcome it would have had.
    """


class ConflictError(StorageError):
    """Applying inside the host's transaction (`connection=`) lost a race to another writer: a
    call changed, a unique key was taken, or the database chose this transaction as a deadlock's
    loser. Nothing of the tracker's part was written.

    The tracker does not retry inside a transaction it does not own: roll back your transaction
    and run the whole of it again, the `apply` included.
    """
