"""What runs on the device and when: the bounded, per-user fair waiting line and the scheduler that owns
admission, batching, deadlines and cancellation."""
