import sys

from apm.cli.main import main

sys.exit(main())
