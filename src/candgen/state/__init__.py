"""Online state shared by the workers: an ordered log of writes (events, items, deletions, users) and the
L1/L2/L3 caches, behind one interface opened by URL (`open_state`): SQLite journal (embedded default),
`memory://`, `redis://`. See `candgen.state.base` for the contract; tests/contract/test_state_contract.py
checks every backend against it.
"""

from candgen.state.base import (
    CACHE_LEVELS,
    Cache,
    Record,
    StateStore,
    StateUnavailable,
    key,
    open_state,
    register,
)

__all__ = ["CACHE_LEVELS", "Cache", "Record", "StateStore", "StateUnavailable", "key", "open_state", "register"]
