"""One file per method; each exposes `run(cfg, **inputs)`."""

RECIPES = ("offline",)
