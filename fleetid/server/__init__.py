"""The identity server: an ASGI application, one module per spec it implements."""
