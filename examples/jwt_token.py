"""Print a JWT for trying examples/auth.toml: HS256 with $MEDIATION_JWT_SECRET, aud "mediation",
the given subject (the client id), expiring in an hour:

    export TOKEN=$(.venv/bin/python examples/jwt_token.py alice)

With ``--subscribe PATTERN`` / ``--publish PATTERN`` (each repeatable) the token also carries the
``mediation`` claim that ``authorize = true`` reads, ``{"subscribe": [...], "publish": [...]}``
(``*`` one level, ``**`` the rest; README, "Choosing streams"):

    .venv/bin/python examples/jwt_token.py bob --subscribe 'prices.A' --publish 'prices.*'
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import jwt

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("subject")
    parser.add_argument("--subscribe", action="append", default=[], metavar="PATTERN")
    parser.add_argument("--publish", action="append", default=[], metavar="PATTERN")
    arguments = parser.parse_args()
    claims: dict[str, Any] = {
        "sub": arguments.subject,
        "aud": "mediation",
        "exp": int(time.time()) + 3600,
    }
    if arguments.subscribe or arguments.publish:
        claims["mediation"] = {"subscribe": arguments.subscribe, "publish": arguments.publish}
    print(jwt.encode(claims, os.environ["MEDIATION_JWT_SECRET"], "HS256"))
