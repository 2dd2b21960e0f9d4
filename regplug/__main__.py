"""``python -m regplug``: the ``regplug`` command (:func:`regplug.cli.main`).

Docs: docs/compare.md, docs/tune.md, docs/cli-plugins.md.
"""

import sys

from .cli import main

sys.exit(main())
