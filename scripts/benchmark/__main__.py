"""`python -m scripts.benchmark`: see `--help`."""
import sys

from scripts.benchmark import main

sys.exit(main())
