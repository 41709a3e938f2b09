"""Online engagement attribution: which source and which A/B variant earned each click, like, share.

The app remembers the last candidate list it served to a sample of users (a bounded LRU with a TTL).
An event on an item of that list is credited to every source that found the item (provenance) and to
the list's variant. `impression` events (exposure) are credited the same way, so "likes per impression
of the social source in variant B" is a ratio of two counters fed from the same sample.

Sampling is by a stable hash of the user id (1 user in `sample_every`), so a sampled user's lists and
events are all seen. State is per process: with several workers an event only finds lists served by
its own worker, which thins numerator and denominator alike (the ratios stay fair). Memory: the lists
are kept by reference (the item id strings are the engine's), ~20-100 KB per remembered user at k=1000.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from candgen.serve.protocol import CandidatesResult


@dataclass(slots=True)
class _Served:
    item_ids: list[str]
    sources: list[list[str]]
    variant: str
    at: float
    position: dict[str, int] | None = None  # item id → rank, built at the first event on this list


class EngagementAttribution:
    """Remembers served lists of sampled users; credits their events to sources and variants.

    Thread-safe (one lock; every operation is a few dictionary steps).
    """

    def __init__(
        self, *, max_users: int = 1000, ttl_s: float = 3600.0, sample_every: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_users < 0 or sample_every < 1 or ttl_s <= 0:
            raise ValueError(f"attribution needs max_users >= 0, sample_every >= 1, ttl_s > 0; got "
                             f"{max_users}, {sample_every}, {ttl_s}")
        self.max_users, self.ttl_s, self.sample_every = max_users, ttl_s, sample_every
        self._clock = clock
        self._lists: OrderedDict[str, _Served] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._lists)

    def sampled(self, user_id: str) -> bool:
        if self.max_users == 0:
            return False
        # crc32, not hash(): stable across worker processes and restarts (hash() is salted per process)
        return self.sample_every == 1 or zlib.crc32(user_id.encode()) % self.sample_every == 0

    def served(self, user_id: str, res: CandidatesResult) -> bool:
        """Remember the list just served to `user_id`; True if this user is in the sample."""
        if not res.item_ids or not self.sampled(user_id):
            return False
        entry = _Served(item_ids=res.item_ids, sources=res.sources, variant=res.variant, at=self._clock())
        with self._lock:
            self._lists[user_id] = entry
            self._lists.move_to_end(user_id)
            while len(self._lists) > self.max_users:
                self._lists.popitem(last=False)
        return True

    def credit(self, user_id: str, item_id: str) -> tuple[list[str], str] | None:
        """(sources that found the item, variant) if the user's remembered list holds it, else None."""
        with self._lock:
            entry = self._lists.get(user_id)
            if entry is None:
                return None
            if self._clock() - entry.at > self.ttl_s:
                del self._lists[user_id]
                return None
            if entry.position is None:
                entry.position = {item: n for n, item in enumerate(entry.item_ids)}
            n = entry.position.get(item_id)
            return None if n is None else (entry.sources[n], entry.variant)
