"""The one Ray workaround: a single-node Ray that stays on 127.0.0.1.

Given `_node_ip_address="127.0.0.1"`, Ray (2.60) still swaps loopback for the machine's routable
address (`ray._private.services.resolve_ip_for_localhost`) unless its "no multi-node clusters" mode
is on, and Ray offers no public switch for that mode: only the variable below, which Ray reads once,
when `ray._private.ray_constants` is first imported. So set the variable, and when Ray was already
imported, the constant it was read into. The variable stays set: processes started later that join
this Ray at "127.0.0.1:<port>" (`spd` subprocesses in tests) must resolve loopback the same way, or
they knock at the routable address where nothing listens.

tests/test_train.py::test_a_local_ray_listens_on_loopback_only fails when a Ray upgrade changes
this behaviour (the constant gone or the node no longer on 127.0.0.1).
"""

from __future__ import annotations

import os
import sys

ENV_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
_CONSTANTS = "ray._private.ray_constants"


def loopback_only() -> None:
    """Call before `ray.init` of a single-node Ray: keep 127.0.0.1 as its address."""
    os.environ[ENV_VAR] = "0"
    constants = sys.modules.get(_CONSTANTS)
    if constants is None:
        import importlib

        constants = importlib.import_module(_CONSTANTS)
    if not hasattr(constants, "ENABLE_RAY_CLUSTER"):
        raise RuntimeError(f"{_CONSTANTS}.ENABLE_RAY_CLUSTER is gone: revisit pipeline/ray_loopback.py")
    constants.ENABLE_RAY_CLUSTER = False
