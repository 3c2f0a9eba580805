import sys

from jobs.report.cli import main

sys.exit(main())
