"""Local fakes of external peers, served on 127.0.0.1 with ephemeral ports (one fake per peer)."""
