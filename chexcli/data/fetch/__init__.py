"""`chex data fetch`: resumable, checksummed downloads from PhysioNet and Kaggle.

:func:`chexcli.data.fetch.run.fetch` is the entry; docs/data.md#chex-data-fetch says what it
guarantees (resume, checksums, retries, the stall watchdog, where credentials go).
"""
