"""In which order requests are applied: lookup batches, groups and the stream (scheduler); where collapsed requests are split (spans)."""
