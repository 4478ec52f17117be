import sys

from plugins.comfy_compat.launcher import main

sys.exit(main())
