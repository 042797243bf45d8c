import sys

from tests.rq_conformance.runner import main

sys.exit(main(sys.argv[1:]))
