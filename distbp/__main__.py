import sys

from distbp.cli import main

sys.exit(main())
