"""The rules: the decision procedure (decide), aliases (alias), and what a request reads and writes (touches)."""
