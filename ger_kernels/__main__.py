import sys

from ger_kernels.cli import main

sys.exit(main())
