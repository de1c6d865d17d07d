"""The write layer (Close's, or a dry run's), creates whose answer was lost, the caches and the created-id ledger."""
