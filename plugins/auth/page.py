"""The login and logout pages: plain HTML forms with inline styles, no scripts, no third-party assets."""

from __future__ import annotations

from html import escape

_STYLE = """
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;
font-family:system-ui,sans-serif;background:#202020;color:#ddd}
form{background:#2b2b2b;padding:2rem 2.2rem;border-radius:10px;width:18rem;
box-shadow:0 6px 24px #0008}
h1{font-size:1.2rem;margin:0 0 1.2rem}
label{display:block;font-size:.85rem;margin:.8rem 0 .3rem}
input{width:100%;box-sizing:border-box;padding:.5rem;border-radius:6px;border:1px solid #555;
background:#1c1c1c;color:#eee;font-size:1rem}
button{margin-top:1.4rem;width:100%;padding:.6rem;border:0;border-radius:6px;background:#3b6fd8;
color:#fff;font-size:1rem;cursor:pointer}
p.error{background:#5a2222;border-radius:6px;padding:.5rem .7rem;font-size:.85rem}
"""


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def login_page(next_path: str, error: str | None = None, name: str = "") -> str:
    message = f"<p class=error role=alert>{escape(error)}</p>" if error else ""
    return _page(
        "Sign in - ComfyUI",
        f'<form method=post action="/auth/login">'
        f"<h1>Sign in</h1>{message}"
        f'<input type=hidden name=next value="{escape(next_path)}">'
        "<label for=username>User name</label>"
        f'<input id=username name=username autocomplete=username required autofocus value="{escape(name)}">'
        "<label for=password>Password</label>"
        "<input id=password name=password type=password autocomplete=current-password required>"
        "<button type=submit>Sign in</button></form>",
    )


def logout_page(name: str) -> str:
    return _page(
        "Sign out - ComfyUI",
        '<form method=post action="/auth/logout">'
        f"<h1>Signed in as {escape(name)}</h1>"
        "<button type=submit>Sign out</button></form>",
    )
