"""A Segment event to "Create or Update Contact and Lead" requests, without I/O: parse, trigger, mapping, normalisation, collapse."""
