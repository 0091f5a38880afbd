import sys

from cxrdx.cli import main

sys.exit(main())
