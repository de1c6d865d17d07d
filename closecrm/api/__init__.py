"""HTTP to Close and nothing else: the client (a paced step, one classified attempt, a retry policy), pacing to the rate budget, learned budgets, call counters."""
