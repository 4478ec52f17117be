"""The auth plugin: real users instead of a ``Comfy-User`` header anyone can set.

Off unless ``--auth password`` or ``--auth proxy`` is given. In password mode, accounts made with
``comfykernel users`` log in through a small page of ours (a session cookie) or send an API token
(``Authorization: Bearer``); in proxy mode a trusted reverse proxy names the user in a header.
The identity it establishes answers the kernel's ``identify`` hook, which scopes prompts, the
WebSocket and outputs per user, and replaces the ``Comfy-User`` header for userdata and settings.
See docs/security.md.
"""
