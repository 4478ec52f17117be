"""This pack must be reported as failed; the server must start anyway."""

def broken(:
    pass
