"""The HTTP layer every plasticity route shares: API-key checks, JSON error bodies, body limits.

- :mod:`.auth`: the bearer-token check of the server's API key.
- :mod:`.errors`: one JSON error shape, with messages cut short and server paths removed.
- :mod:`.body`: the request-size cap and a JSON parser that refuses absurd nesting.
"""
