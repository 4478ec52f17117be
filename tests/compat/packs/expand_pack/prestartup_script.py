import os

os.environ["EXPAND_PACK_PRESTARTUP"] = "ran"
