"""Imported by the forkserver that orchestrix starts, after orchestrix itself: it imports the
``preload`` modules there, once, so that every worker forked from it has them at no cost.

Not given to multiprocessing's own preload list: that one forgives an ImportError only, and any
other exception a module raises as it loads kills the forkserver (every later worker start then
fails with an EOFError that names nothing). Here every failure is forgiven: the worker imports
what is missing itself (:mod:`orchestrix.worker.preload`) and reports the error with the
module's name. The forkserver's command line carries module names only, so the list travels in
the environment variable ``ENV``, set while the forkserver starts (see
``processes._acquire_forkserver``), with the caller's ``sys.path`` (Python 3.11's forkserver
ignores it, and a module found through it would not be found).
"""

from __future__ import annotations

import importlib
import json
import os
import sys

#: the preload modules and the caller's sys.path, as JSON, for the forkserver's start
ENV = "ORCHESTRIX_FORKSERVER_PRELOAD"


def _warm_up() -> None:
    data = os.environ.pop(ENV, None)  # popped: the workers forked from here do not see it
    if data is None:
        return  # imported elsewhere than in a starting forkserver
    listed = json.loads(data)
    sys.path[:] = listed["sys_path"]
    for name in listed["modules"]:
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - the worker imports it again and reports it
            continue


_warm_up()
