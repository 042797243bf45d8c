"""KRYONIX job functions and the typed enqueue API the web tier calls. Imports `cache`, never `workers`."""
