"""The worker process and its front ends: the HTTP API (health, readiness, metrics, the bot's NDJSON chat),
the Redis Streams consumer, and the process that binds, loads the model, serves and shuts down."""
