"""``python -m simulations.copying [--quick] [--experiment ...]``: run the study."""

import sys

from simulations.copying.study import main

sys.exit(main())
