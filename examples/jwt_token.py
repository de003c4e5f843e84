"""Print a JWT for trying examples/auth.toml: HS256 with $MEDIATION_JWT_SECRET, aud "mediation",
the given subject (the client id), expiring in an hour:

    export TOKEN=$(.venv/bin/python examples/jwt_token.py alice)
"""

from __future__ import annotations

import argparse
import os
import time

import jwt

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("subject")
    arguments = parser.parse_args()
    claims = {"sub": arguments.subject, "aud": "mediation", "exp": int(time.time()) + 3600}
    print(jwt.encode(claims, os.environ["MEDIATION_JWT_SECRET"], "HS256"))
