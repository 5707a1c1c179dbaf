"""`python -m negrl.report DIR`: the same as `negrl-report DIR`."""

import sys

from negrl.report.report import main

sys.exit(main())
