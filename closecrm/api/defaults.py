"""Where Close is and how much of its budget a worker takes, unless told otherwise.

Apart from the client so that the command line can read them without loading the HTTP stack.
"""

DEFAULT_CLOSE_URL = "https://api.close.com/api/v1/"
DEFAULT_API_KEY_ENV = "CLOSE_API_KEY"
# Each worker paces itself to this share of the key's rate budget (--budget-share).
DEFAULT_BUDGET_SHARE = 1.0
