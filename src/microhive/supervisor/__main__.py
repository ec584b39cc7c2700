"""``python -m microhive.supervisor -f FILE``: run a mesh's supervisor in the foreground.

``microhive up`` starts this in the background; it is rarely run by hand.

Restart policy knobs (environment variables, read at start):

* ``MICROHIVE_RESTART_BACKOFF`` -- first delay before a restart, seconds (0.5); it doubles
  with each restart inside the window,
* ``MICROHIVE_RESTART_BACKOFF_MAX`` -- the longest delay (30),
* ``MICROHIVE_MAX_RESTARTS`` / ``MICROHIVE_RESTART_WINDOW`` -- more than this many
  restarts within this many seconds is a crash loop: the replica is marked failed (5 / 60).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from microhive.config import find_config, load_config
from microhive.errors import ConfigError, MicrohiveError
from microhive.supervisor.core import RestartPolicy, Supervisor
from microhive.supervisor.paths import ProjectPaths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m microhive.supervisor")
    parser.add_argument("-f", "--file", default=None, help="the mesh file")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per readiness probe
    try:
        config_path = find_config(args.file)
        mesh = load_config(config_path)
        policy = RestartPolicy.from_env(os.environ)
        supervisor = Supervisor(
            mesh, config_path, ProjectPaths.for_config(config_path), policy=policy
        )
        return supervisor.run()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MicrohiveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
