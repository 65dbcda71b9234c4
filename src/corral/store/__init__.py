"""The run store: runs, their journals and the processes executing them, in SQLite or Postgres."""

from corral.store.db import Store, default_home, store_url
from corral.store.records import EventRecord, RunRecord, RunStatus

__all__ = ["EventRecord", "RunRecord", "RunStatus", "Store", "default_home", "store_url"]
