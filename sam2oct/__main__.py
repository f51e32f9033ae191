import sys

from sam2oct.cli import main

sys.exit(main())
