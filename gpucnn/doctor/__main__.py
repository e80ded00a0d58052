"""``python -m gpucnn.doctor``: see gpucnn.doctor."""

import sys

from gpucnn.doctor import main

sys.exit(main())
