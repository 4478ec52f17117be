"""The route table of the ``files`` plugin."""

from __future__ import annotations

from aiohttp import web

from kernel.files import listing, metadata, upload, view

routes = web.RouteTableDef()
routes.post("/upload/image")(upload.upload_image)
routes.post("/upload/mask")(upload.upload_mask)
routes.get("/view")(view.view)
routes.get("/view_metadata/{folder_name}")(metadata.view_metadata)
routes.get("/internal/files/{directory_type}")(listing.internal_files)
