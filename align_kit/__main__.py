import sys

from align_kit.cli import main

sys.exit(main())
