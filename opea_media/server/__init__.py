"""The OPEA text2image / image2video HTTP services (aiohttp).

Import what you need from the submodules (`server.app.create_app`, `server.config.ServerConfig`):
this package itself imports nothing, so `opea-media --help` does not pay for aiohttp. Nothing here
imports torch: the model loads on the worker thread after the port is open.
"""
