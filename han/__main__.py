import sys

from han.cli import main

sys.exit(main())
