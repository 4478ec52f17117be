"""The userdata plugin: ``/users``, ``/userdata*``, ``/v2/userdata`` and ``/settings*``.

Every user has a folder ``<user dir>/<user_id>/`` holding their files (the frontend's
``workflows/*.json``, ``user.css``, ...) and ``comfy.settings.json``. In single-user mode the only
user is ``default``; with ``--multi-user`` the ``Comfy-User`` header names the user, who must be
listed in ``<user dir>/users.json``. Every client-supplied name goes through ``kernel.paths``.
"""
