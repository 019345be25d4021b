"""API-server side of plasticity: the endpoint plugin (admin routes) and the
request middleware that validates and rewrites per-request steering flags."""
