"""`chex serve`: a local web page to ask ChEX about X-rays.

`session` holds the logic as plain functions (upload -> prediction -> annotated image, table, JSON),
`model_queue` the line of model calls, `app` the Starlette routes, `guards` the Host/Origin/auth checks,
`protocol` and `server` the uvicorn side, `static/` the page, `examples` the example images.
See docs/serve.md.
"""
