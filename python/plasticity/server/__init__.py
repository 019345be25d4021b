"""API-server side of plasticity: the endpoint plugin that mounts each path's routes
(steering, training, snapshots, dream) on vLLM's app, and the capture of served requests."""
