"""The web-tier adapters: Flask and Starlette glue over the cache services.

Each framework is imported only inside its own module, so `cache` works without the
`web` extra; `client_address` is framework-neutral and needs none of them.
"""
