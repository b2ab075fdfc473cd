"""Bytes in and out: decode input images under limits, fetch image URLs safely, write PNG and video.

Import the submodule you need (`images`, `files`, `video`, `fetch`); this package imports none of
them, so the CLI does not pay for aiohttp or ffmpeg until it uses them.
"""
