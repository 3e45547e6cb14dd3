"""The engine executes the scheduler's steps on the loaded model: batched prefill and decode, and the image
and prefix caches. ``sequence`` is the seam the scheduler sees (and fakes in tests implement)."""
