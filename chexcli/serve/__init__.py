"""`chex serve`: a local web page to ask ChEX about X-rays.

`session` holds the logic as plain functions (upload -> prediction -> annotated image, table, JSON),
`server` the standard-library HTTP server around it, `static/` the page, `examples` the example images.
"""
