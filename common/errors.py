"""The one error tree of this project, grouped by what the caller does next.

Every error the edge agent or the ingest raises on purpose derives from :class:`TelematicsError`,
through exactly one of three branches:

* :class:`Fatal`: nothing a retry can fix (bad configuration, a missing or unsafe key file, a
  ledger that holds another root, a damaged ledger, a store another process holds). Stop, say
  why in one line, do not commit.
* :class:`Retryable`: an infrastructure failure (a database, a broker or a ledger unavailable or
  busy). Keep what was committed, commit nothing new, back off and try again; say so loudly.
* :class:`Refused`: this input is not accepted. Record why (the dead-letter topic, the
  rejections table) and go on with the rest.

Third-party errors (DuckDB, SQLite, aiokafka, paho, the EVM client) are mapped into this tree at
the adapter that calls them; the wire contract's own errors (``schemas.block.WireError``,
``schemas.session.SessionError``) carry a rejection reason and become ``Refused`` input where the
ingest records them. A command line tool prints any ``TelematicsError`` as one line.
"""

from __future__ import annotations


class TelematicsError(Exception):
    """The root: an error this project raises on purpose, with a message meant for the operator."""


class Fatal(TelematicsError):
    """Stop: nothing a retry can fix until someone acts."""


class Retryable(TelematicsError):
    """An infrastructure failure: commit nothing, back off, try again."""


class Refused(TelematicsError):
    """This input is not accepted: record why, and go on with the rest."""
