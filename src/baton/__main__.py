import os
import sys

# ``python -m baton`` puts the current folder first on sys.path; the ``baton`` script does not.
# Drop it, so a file there (json.py, a workflow's tools) never shadows an installed module;
# ``baton run module:function`` appends it again, last.
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from baton.cli.main import main  # noqa: E402

raise SystemExit(main())
