"""What the bot and the worker share, and the only part of ``model_worker`` the bot imports.

``protocol`` is the typed request/event contract of the worker's NDJSON API, ``queue_streams`` the Redis
Streams layout of the shared queue, and ``logs`` the one-line, secret-masking log format of both processes.
Nothing here imports torch.
"""
