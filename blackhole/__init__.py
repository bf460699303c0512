"""blackhole: an SMTP sink that answers every message and keeps none of them."""

__version__ = "3.0.0.dev0"
