import sys

from taskdb.cli.main import main

sys.exit(main())
