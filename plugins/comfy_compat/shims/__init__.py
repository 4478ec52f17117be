"""Present so packaging ships this folder; the modules are imported top-level (see README.md)."""
