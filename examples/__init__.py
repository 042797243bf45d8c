"""Complete small web apps built only on the adapters (`cache.integrations`)."""
