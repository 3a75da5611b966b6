"""emo: frozen-encoder feature caches (stage 1) and small emotion heads trained from them (stage 2)."""

__version__ = "0.1.0"
